"""Generation backends, registered by name and imported only when chosen.

backend = get_backend("transformers")(sft_dir, aligned_dir, dtype="auto")
backend.set_weights_alpha(0.3)      # in place, streamed from the checkpoints on disk
gens = backend.generate(prompt_ids, sampling, stop_token_ids)
backend.close()
"""

from __future__ import annotations

import importlib
from typing import Any

from expo_batch.errors import UsageError
from expo_batch.generate.base import Backend, Generation, resolve_stop_ids

BACKENDS: dict[str, str] = {
    "transformers": "expo_batch.generate.transformers_backend:TransformersBackend",
    "vllm": "expo_batch.generate.vllm_backend:VllmBackend",
}

__all__ = ["BACKENDS", "Backend", "Generation", "get_backend", "resolve_stop_ids"]


def get_backend(name: str) -> Any:
    """The backend class registered as ``name`` (imports its module, and so its engine, now)."""
    if name not in BACKENDS:
        raise UsageError(
            f"unknown generation backend {name!r}; choose one of: {', '.join(BACKENDS)}"
        )
    module, _, attr = BACKENDS[name].partition(":")
    if name == "vllm":
        try:
            importlib.import_module("vllm")
        except ImportError as e:
            from expo_batch.errors import ScoringError

            raise ScoringError(
                f"the vllm backend needs vLLM, which cannot be imported here ({e})",
                "pip install 'expo-batch[vllm]' (on CPU: scripts/test_vllm.sh builds a working "
                "venv), "
                "or use --backend transformers",
            ) from None
    return getattr(importlib.import_module(module), attr)
