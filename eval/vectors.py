"""The committed vectors table (eval/vectors.json): text -> base64 of little-endian float32.

Stdlib only, like eval/cases.py: the embedding script writes it from .eval-venv, the harness and the
tests read it from .venv, and neither needs the model.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path

VECTORS_PATH = Path(__file__).resolve().parent / "vectors.json"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # the EMBEDDING_MODEL setting the harness runs with
DIMENSIONS = 384


def encode(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def decode(blob: str) -> list[float]:
    raw = base64.b64decode(blob)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def load_vectors(path: Path = VECTORS_PATH) -> dict[str, list[float]]:
    doc = json.loads(path.read_text())
    if doc.get("dimensions") != DIMENSIONS:
        raise ValueError(f"{path.name}: expected {DIMENSIONS} dimensions, found {doc.get('dimensions')}")
    return {text: decode(blob) for text, blob in doc["vectors"].items()}


def write_vectors(vectors: dict[str, list[float]], path: Path = VECTORS_PATH, *, source: str) -> None:
    """One text per line, sorted, so a changed case shows as a few changed lines in the diff."""
    doc = {
        "model": MODEL,
        "source": source,
        "dimensions": DIMENSIONS,
        "encoding": "base64 of little-endian float32, L2-normalised",
        "vectors": {text: encode(vectors[text]) for text in sorted(vectors)},
    }
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
