"""The stored form of a transcript: UTF-8, or zlib when that saves space (every read decodes)."""

from __future__ import annotations

import zlib

from memproc.settings import Settings

ENCODING_ZLIB = "zlib"
ENCODING_UTF8 = "utf-8"


def encode_transcript(text: str, settings: Settings) -> tuple[bytes, str]:
    """zlib-6 at least halves realistic chat text from COMPRESS_MIN_BYTES (8 KB) up (make bench)."""
    data = text.encode()
    if len(data) >= settings.compress_min_bytes:
        packed = zlib.compress(data, 6)
        if len(packed) < len(data):
            return packed, ENCODING_ZLIB
    return data, ENCODING_UTF8


def decode_transcript(data: bytes, encoding: str) -> str:
    return (zlib.decompress(data) if encoding == ENCODING_ZLIB else data).decode()
