"""The read side of the API, one module per concern: status, hierarchy, sessions, search, stats,
dead letters. Each validates its input, reads through `memproc.dal` and shapes the response."""
