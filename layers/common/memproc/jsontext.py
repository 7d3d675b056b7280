"""``loads``: json.loads, made faster, for the JSON the processor reads on its hot path (the model's
replies, embeddings replies, transcripts, stored memories' attributes)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pydantic_core

# pydantic-core's parser stops at 4300 digits, Python's at sys.get_int_max_str_digits() (0: none).
_JITER_DIGITS = 4300


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``, parsed by pydantic-core's parser (jiter: about twice as fast) when it
    can. It reads every document json.loads reads as json.loads does (values, floats to the last bit,
    a repeated key's last value: tests/test_llm_wire.py); what it refuses (lone surrogates, a BOM,
    UTF-16, deep nesting, 4300 digits) is json.loads's to parse or to fail with its own error. Under
    a lower digit limit than jiter's, json.loads alone reads."""
    if 0 < sys.get_int_max_str_digits() < _JITER_DIGITS:
        return json.loads(text)
    try:
        return pydantic_core.from_json(text)
    except (ValueError, TypeError):  # TypeError: a str that is not UTF-8 (lone surrogates)
        return json.loads(text)
