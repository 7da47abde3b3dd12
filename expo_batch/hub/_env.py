"""The Hugging Face environment as seen at call time, and the retry policy.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE into ``constants`` when it is
imported. The endpoint is read again here at each call and passed explicitly to every client call,
so that an ``HF_ENDPOINT`` set after import (a test, a mirror chosen at run time) is honoured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TRUE = {"1", "ON", "YES", "TRUE"}


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set now, or when huggingface_hub was imported."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if env is not None:
        return env.upper() in _TRUE
    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def api():
    """A fresh ``HfApi`` on the current endpoint (token: HF_TOKEN or the stored login)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), library_name="expo-batch")


def current_token() -> str | None:
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception:  # a broken token file must not hide the real error
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often a transient Hub failure (network, 5xx, 429) is retried, with exponential backoff.

    Read from ``EXPO_HUB_RETRIES`` (attempts in all, default 4) and ``EXPO_HUB_RETRY_DELAY``
    (first wait in seconds, default 1; doubled each time, capped at ``max_delay``).
    """

    attempts: int = 4
    base_delay: float = 1.0
    max_delay: float = 30.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        attempts = int(os.environ.get("EXPO_HUB_RETRIES") or cls.attempts)
        delay = float(os.environ.get("EXPO_HUB_RETRY_DELAY") or cls.base_delay)
        return cls(attempts=max(1, attempts), base_delay=max(0.0, delay))

    def delay(self, attempt: int) -> float:
        """Wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
