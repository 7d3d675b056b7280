"""memproc_local: run memproc on a workstation, without Docker or AWS (``make dev``, the tests).

Lives beside the library, not in ``layers/common/``: everything under ``layers/common/`` is built
into the Lambda layer, and Lambda needs none of this (nor its PyYAML and werkzeug dependencies).
"""
