"""The in-place alpha switch shared by the backends: stream theta1 + alpha * (theta1 - theta0).

Nothing here writes a checkpoint: tensors come from ``iter_extrapolated`` one at a time, computed
from the two checkpoints on disk, and go straight into the loaded model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from expo_batch.errors import CheckpointError


class PairSource:
    """The two checkpoints of a pair, opened once and reused for every alpha."""

    def __init__(
        self, sft_dir: str | Path, aligned_dir: str | Path, *, vocab_policy: str = "error"
    ):
        from expo_batch.checkpoint import Checkpoint

        self.sft_dir = Path(sft_dir)
        self.aligned_dir = Path(aligned_dir)
        self.vocab_policy = vocab_policy
        self.sft = Checkpoint.open(self.sft_dir)
        self.aligned = Checkpoint.open(self.aligned_dir)

    def tensors(self, alpha: float, out_dtype: Any = None) -> Iterator[tuple[str, Any]]:
        from expo_batch.extrapolate import iter_extrapolated

        return iter_extrapolated(
            self.sft,
            self.aligned,
            float(alpha),
            out_dtype=out_dtype,
            vocab_policy=self.vocab_policy,
        )

    def close(self) -> None:
        for ckpt in (self.sft, self.aligned):
            close = getattr(ckpt, "close", None)
            if close is not None:
                close()


def _target_map(model: Any) -> dict[str, Any]:
    """Every parameter and buffer of ``model`` by state-dict name (tied weights appear twice)."""
    return dict(model.state_dict(keep_vars=True))


def _lookup(targets: dict[str, Any], name: str, prefix: str) -> Any | None:
    if name in targets:
        return targets[name]
    # Checkpoints of a bare base model (no head) or of a model saved with its prefix.
    if prefix:
        if f"{prefix}.{name}" in targets:
            return targets[f"{prefix}.{name}"]
        if name.startswith(prefix + ".") and name[len(prefix) + 1 :] in targets:
            return targets[name[len(prefix) + 1 :]]
    return None


def load_into_model(model: Any, tensors: Iterator[tuple[str, Any]], *, where: str) -> int:
    """Copy named tensors into ``model``'s parameters in place (cast to each parameter's dtype).

    Returns the number of tensors copied. A checkpoint name the model does not have, or a shape
    that differs, raises :class:`CheckpointError` naming the tensor.
    """
    import torch

    targets = _target_map(model)
    prefix = getattr(model, "base_model_prefix", "") or ""
    n = 0
    with torch.no_grad():
        for name, tensor in tensors:
            target = _lookup(targets, name, prefix)
            if target is None:
                raise CheckpointError(
                    f"tensor {name!r} of {where} has no counterpart in the loaded model",
                    "the in-place switch needs checkpoint names that match the model's state dict",
                )
            if tuple(target.shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"tensor {name!r} of {where} has shape {list(tensor.shape)}, "
                    f"the loaded model has {list(target.shape)}"
                )
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))
            n += 1
    return n
