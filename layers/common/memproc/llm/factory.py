"""Choosing the provider from the settings: OpenAI when a key is configured, offline otherwise.

On AWS the key may live in Secrets Manager; it is resolved here, once per process, so the
providers only ever see a plain key.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from memproc.llm.base import LLMProvider
from memproc.llm.offline import OfflineProvider
from memproc.llm.openai_provider import OpenAIProvider

if TYPE_CHECKING:
    from memproc.llm.gate import Gate
    from memproc.settings import Settings

logger = logging.getLogger(__name__)


def make_provider(settings: Settings, gate: Gate | None = None) -> LLMProvider:
    """OpenAI when an API key is configured (directly, or as a Secrets Manager secret on AWS),
    its requests through `gate` when given; otherwise the offline provider, with a loud warning."""
    key = settings.openai_api_key.get_secret_value().strip() if settings.openai_api_key else ""
    if not key and settings.openai_secret_arn:
        from aws_lambda_powertools.utilities.parameters import get_secret
        from pydantic import SecretStr

        secret = get_secret(settings.openai_secret_arn, max_age=300)
        key = (secret if isinstance(secret, str) else secret.decode()).strip()
        settings = settings.model_copy(update={"openai_api_key": SecretStr(key)})
    if key:
        return OpenAIProvider(settings, gate)
    logger.warning(
        "OPENAI_API_KEY is not set: using the OFFLINE LLM provider. Memories and summaries are "
        "heuristic (keyword rules) and embeddings are hashing-based, not semantic. Set OPENAI_API_KEY "
        "(and OPENAI_BASE_URL for a compatible server) for real extraction."
    )
    return OfflineProvider.from_settings(settings)
