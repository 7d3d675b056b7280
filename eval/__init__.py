"""The memory-quality harness (`make eval`): scripted cases, committed vectors, metrics."""
