"""The small interface every generation backend implements, and the record it returns."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from expo_batch.manifest import SamplingConfig

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    text: str
    """The answer, decoded without special tokens (the stop token is not part of it)."""
    n_tokens: int
    """Generated tokens, counting the stop token when there is one (vLLM's len(token_ids))."""
    finish_reason: FinishReason

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Backend(Protocol):
    """A loaded policy that can switch alpha in place and generate.

    Constructed as ``cls(sft_dir, aligned_dir, *, dtype, trust_remote_code, device=None)``; it
    starts with the aligned model's weights (alpha 0).
    """

    alpha: float | None
    """The alpha currently loaded (None after a failed switch)."""
    tokenizer: Any
    """The policy's tokenizer (the aligned model's), used to render prompts."""

    def set_weights_alpha(self, alpha: float) -> None:
        """Load theta1 + alpha * (theta1 - theta0) into the engine in place, streamed from disk."""
        ...

    def generate(
        self, prompt_ids: list[list[int]], sampling: SamplingConfig, stop_token_ids: list[int]
    ) -> list[Generation]:
        """One generation per prompt, in order."""
        ...

    def close(self) -> None: ...


def _as_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def eos_ids(model_dir: str | Path) -> list[int]:
    """EOS ids a model declares: generation_config.json (what vLLM honours), then config.json."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            for t in _as_list(data.get("eos_token_id")):
                if t not in ids:
                    ids.append(t)
    return ids


def resolve_stop_ids(model_dir: str | Path, extra: list[int] | tuple[int, ...] = ()) -> list[int]:
    """The model's EOS ids plus the manifest's ``stop_token_ids``, without duplicates."""
    ids = eos_ids(model_dir)
    for t in extra:
        if int(t) not in ids:
            ids.append(int(t))
    return ids
