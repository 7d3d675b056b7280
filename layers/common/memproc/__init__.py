"""memproc: asynchronous memory processing for chat applications (AWS Lambda + Redis)."""

__version__ = "0.1.0"
