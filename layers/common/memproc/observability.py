"""Logger, Tracer and Metrics for every function: one place, so no module imports HTTP code for them.

The Tracer is created on first use: it imports the X-Ray SDK (with botocore), which is half of
store_raw's import time, and store_raw makes one Redis call that gains nothing from subsegments.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger, Metrics

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "memproc")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Memproc")

logger = Logger()
metrics = Metrics()


@cache
def get_tracer() -> Tracer:
    from aws_lambda_powertools import Tracer

    return Tracer()
