"""Pure compatibility check of a pair, from tensor names, shapes and dtypes alone.

Used twice: by the extrapolation engine on local checkpoints, and by the Hub preflight on
safetensors headers read remotely, before a single weight is downloaded. Both must agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from expo_batch.errors import CheckpointError

VocabPolicy = Literal["error", "copy-extra"]

# Tensors whose first dimension is the vocabulary (Llama/Mistral, GPT-2, InternLM2, BERT-likes).
_VOCAB_TENSOR_MARKERS = (
    "embed_tokens",
    "lm_head",
    "wte",
    "tok_embeddings",
    "word_embeddings",
    "embed_out",
)
_VOCAB_TENSOR_NAMES = ("output.weight",)

FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


@dataclass(frozen=True)
class TensorSpec:
    """What a checkpoint header says about one tensor. ``dtype`` uses safetensors names (BF16...)."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def is_vocab_tensor(name: str) -> bool:
    return any(m in name for m in _VOCAB_TENSOR_MARKERS) or name in _VOCAB_TENSOR_NAMES


@dataclass
class VocabMismatch:
    name: str
    sft_rows: int
    aligned_rows: int


@dataclass
class CompatReport:
    """The verdict on a pair. ``problems`` empty means the pair can be extrapolated."""

    problems: list[str] = field(default_factory=list)
    vocab_mismatches: list[VocabMismatch] = field(default_factory=list)
    n_tensors: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self, what: str = "pair") -> None:
        if self.problems:
            shown = self.problems[:20]
            more = len(self.problems) - len(shown)
            lines = "\n".join(f"  - {p}" for p in shown)
            if more:
                lines += f"\n  ... and {more} more"
            hint = None
            if any("vocabulary" in p for p in self.problems):
                hint = (
                    "the two models have different vocabulary sizes; to extrapolate the shared rows "
                    "and copy the extra rows from the aligned model, set vocab_policy: copy-extra "
                    "(manifest) or pass --vocab-policy copy-extra"
                )
            raise CheckpointError(f"{what} cannot be extrapolated:\n{lines}", hint)


def check_compatible(
    sft: dict[str, TensorSpec],
    aligned: dict[str, TensorSpec],
    *,
    vocab_policy: VocabPolicy = "error",
) -> CompatReport:
    """Compare two checkpoints' tensor specs the way the extrapolation engine will use them.

    Rules: the same tensor names; the same shapes, except that vocabulary tensors may differ in
    their first dimension when ``vocab_policy`` is ``copy-extra`` and the aligned model has at
    least as many rows; floating tensors may differ in float dtype (arithmetic is in float32);
    a non-floating tensor must have the same dtype in both.
    """
    report = CompatReport(n_tensors=len(aligned))
    only_sft = sorted(set(sft) - set(aligned))
    only_aligned = sorted(set(aligned) - set(sft))
    for name in only_aligned:
        report.problems.append(
            f"tensor {name!r} {list(aligned[name].shape)} is in the aligned model but not in the SFT model"
        )
    for name in only_sft:
        report.problems.append(
            f"tensor {name!r} {list(sft[name].shape)} is in the SFT model but not in the aligned model"
        )
    for name in sorted(set(sft) & set(aligned)):
        a, b = sft[name], aligned[name]
        if a.is_float != b.is_float or (not a.is_float and a.dtype != b.dtype):
            report.problems.append(
                f"tensor {name!r} has dtype {a.dtype} in the SFT model and {b.dtype} in the aligned model"
            )
            continue
        if a.shape == b.shape:
            continue
        same_tail = len(a.shape) == len(b.shape) and a.shape[1:] == b.shape[1:]
        if same_tail and is_vocab_tensor(name):
            report.vocab_mismatches.append(VocabMismatch(name, a.shape[0], b.shape[0]))
            if vocab_policy == "copy-extra" and b.shape[0] >= a.shape[0]:
                continue
            why = (
                "the SFT model has more rows than the aligned model, which copy-extra cannot fill"
                if b.shape[0] < a.shape[0]
                else "set the copy-extra vocabulary policy to extrapolate the shared rows"
            )
            report.problems.append(
                f"vocabulary size differs in tensor {name!r}: SFT {list(a.shape)} vs aligned "
                f"{list(b.shape)} ({a.shape[0]} vs {b.shape[0]} rows; {why})"
            )
            continue
        report.problems.append(
            f"tensor {name!r} has shape {list(a.shape)} in the SFT model and {list(b.shape)} in the aligned model"
        )
    return report
