"""Data access: the only package that talks to Redis (clients, the function library, every call).

Domain logic above it (ingest, processor, reads, retention) hands a `Store` down and gets records
back; it never sees a Redis command.
"""
