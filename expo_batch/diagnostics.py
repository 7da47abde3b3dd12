"""How far the aligned model moved from the SFT model: per-tensor and whole-model delta norms.

For each floating tensor, with delta = theta1 - theta0 (over the shared vocabulary rows when the
vocabularies differ):

- ``delta_norm``: the Frobenius norm ||delta||_F;
- ``normalized``: ||delta||_F / sqrt(numel), the per-element RMS change (the paper's Table 1);
- ``relative``: ||delta||_F / ||theta0||_F;
- ``changed_fraction``: the fraction of elements that differ at all.

ExPO assumes a small, well-directed delta. The paper's failure cases have far larger ones: about
6e-6 normalized for zephyr SFT -> DPO against about 2e-4 for a pretrained -> SFT pair, and an
over-trained model (Storm-7B) in between. The thresholds below sit on a log scale between them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from expo_batch.checkpoint import Checkpoint, PairJob, iter_pair_chunks, torch_dtype
from expo_batch.compat import check_compatible
from expo_batch.extrapolate import pair_specs

# Whole-model normalized delta norm (per-element RMS of theta1 - theta0).
NORMAL_DPO_NORMALIZED = 6e-6  # zephyr-7b SFT -> DPO, paper Table 1
PRETRAIN_SFT_NORMALIZED = 2e-4  # pretrained -> SFT, paper Table 1
# Above this (5x a normal DPO delta, 1/7 of a pretrained->SFT one) the pair looks like a
# failure case: an over-trained model or a pair that is not SFT -> aligned.
LARGE_DELTA_NORMALIZED = 3e-5
# Above this it looks like a pretrained -> SFT pair (or unrelated models).
HUGE_DELTA_NORMALIZED = 1e-4
# Below this (and not zero) the two models barely differ: extrapolation has little to amplify.
TINY_DELTA_NORMALIZED = 1e-8


@dataclass
class TensorDelta:
    name: str
    shape: list[int]
    dtype: str
    numel: int  # elements compared (shared rows only on a vocabulary mismatch)
    delta_norm: float
    normalized: float
    theta0_norm: float
    relative: float
    changed_fraction: float


@dataclass
class DeltaTotals:
    n_tensors: int
    numel: int
    delta_norm: float
    normalized: float
    theta0_norm: float
    relative: float
    changed_fraction: float
    max_normalized: float
    max_normalized_tensor: str | None


@dataclass
class DeltaReport:
    """Per-tensor rows, whole-model totals, and warnings that quote the numbers."""

    sft: str
    aligned: str
    rows: list[TensorDelta]
    totals: DeltaTotals
    warnings: list[str] = field(default_factory=list)
    vocab_mismatches: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "sft": self.sft,
            "aligned": self.aligned,
            "totals": asdict(self.totals),
            "warnings": list(self.warnings),
            "vocab_mismatches": dict(self.vocab_mismatches),
            "thresholds": {
                "normal_dpo_normalized": NORMAL_DPO_NORMALIZED,
                "pretrain_sft_normalized": PRETRAIN_SFT_NORMALIZED,
                "large_delta_normalized": LARGE_DELTA_NORMALIZED,
                "huge_delta_normalized": HUGE_DELTA_NORMALIZED,
                "tiny_delta_normalized": TINY_DELTA_NORMALIZED,
            },
            "rows": [asdict(r) for r in self.rows],
        }


def _safe_div(a: float, b: float) -> float:
    return a / b if b > 0 else (0.0 if a == 0 else math.inf)


def delta_warnings(totals: DeltaTotals) -> list[str]:
    """Warnings for a pair whose delta looks like one of the paper's failure cases (pure)."""
    x = totals.normalized
    ref = (
        f"(normal SFT->DPO: about {NORMAL_DPO_NORMALIZED:.0e}; "
        f"pretrained->SFT: about {PRETRAIN_SFT_NORMALIZED:.0e})"
    )
    if totals.numel and x == 0:
        return [
            "the two models are identical (delta is exactly zero): extrapolation changes nothing"
        ]
    if x >= HUGE_DELTA_NORMALIZED:
        return [
            f"normalized delta norm {x:.2e} is as large as a pretrained->SFT pair {ref}; "
            "ExPO is unlikely to help: check that theta0 is the SFT model this one was aligned from"
        ]
    if x >= LARGE_DELTA_NORMALIZED:
        return [
            f"normalized delta norm {x:.2e} is well above a normal alignment delta {ref}; "
            "the model may be over-trained (like Storm-7B in the paper), where ExPO tends to fail; "
            "keep alpha small"
        ]
    if 0 < x < TINY_DELTA_NORMALIZED:
        return [
            f"normalized delta norm {x:.2e} is tiny {ref}: the models barely differ, "
            "large alpha values may be needed"
        ]
    return []


def delta_diagnostics(sft: Checkpoint, aligned: Checkpoint) -> DeltaReport:
    """Per-tensor and whole-model delta norms of a pair, read in bounded memory.

    Vocabulary tensors with different row counts are compared over their shared rows (and
    listed in ``vocab_mismatches``). Non-floating tensors are skipped.

    Raises:
        CheckpointError: names missing or shapes that differ (other than vocabulary rows).
    """
    sft_specs = pair_specs(sft, aligned)
    aligned_specs = aligned.specs
    report = check_compatible(sft_specs, aligned_specs, vocab_policy="copy-extra")
    report.raise_for_problems(f"pair (SFT {sft.folder}, aligned {aligned.folder})")

    jobs = []
    for name, spec in aligned_specs.items():
        if not spec.is_float:
            continue
        a = sft_specs[name]
        # Only the shared leading rows are compared (numel == shared: no aligned-only part).
        jobs.append(PairJob(name, a.numel, a.numel, torch_dtype(a.dtype), torch_dtype(spec.dtype)))

    acc: dict[str, list[float]] = {j.name: [0.0, 0.0, 0.0] for j in jobs}
    a64 = torch.empty(1 << 18, dtype=torch.float64)
    b64 = torch.empty(1 << 18, dtype=torch.float64)
    for job, start, stop, s, a in iter_pair_chunks(sft, aligned, jobs):
        sums = acc[job.name]
        step = a64.numel()
        for i in range(0, stop - start, step):
            j = min(i + step, stop - start)
            x, y = a64[: j - i], b64[: j - i]
            x.copy_(s[i:j])
            y.copy_(a[i:j])
            sums[1] += float(torch.dot(x, x))
            y.sub_(x)
            sums[0] += float(torch.dot(y, y))
            sums[2] += float(torch.count_nonzero(y))

    rows = []
    for job in jobs:
        sq_d, sq_0, changed = acc[job.name]
        spec = aligned_specs[job.name]
        d, t0 = math.sqrt(sq_d), math.sqrt(sq_0)
        rows.append(
            TensorDelta(
                name=job.name,
                shape=list(spec.shape),
                dtype=spec.dtype,
                numel=job.numel,
                delta_norm=d,
                normalized=_safe_div(d, math.sqrt(job.numel)) if job.numel else 0.0,
                theta0_norm=t0,
                relative=_safe_div(d, t0),
                changed_fraction=_safe_div(changed, job.numel) if job.numel else 0.0,
            )
        )
    numel = sum(r.numel for r in rows)
    sq_d = sum(acc[j.name][0] for j in jobs)
    sq_0 = sum(acc[j.name][1] for j in jobs)
    changed = sum(acc[j.name][2] for j in jobs)
    top = max(rows, key=lambda r: r.normalized, default=None)
    totals = DeltaTotals(
        n_tensors=len(rows),
        numel=numel,
        delta_norm=math.sqrt(sq_d),
        normalized=_safe_div(math.sqrt(sq_d), math.sqrt(numel)) if numel else 0.0,
        theta0_norm=math.sqrt(sq_0),
        relative=_safe_div(math.sqrt(sq_d), math.sqrt(sq_0)),
        changed_fraction=_safe_div(changed, numel) if numel else 0.0,
        max_normalized=top.normalized if top else 0.0,
        max_normalized_tensor=top.name if top else None,
    )
    vocab = {m.name: [m.sft_rows, m.aligned_rows] for m in report.vocab_mismatches}
    warnings = delta_warnings(totals)
    if vocab:
        warnings.append(
            "vocabulary sizes differ ("
            + ", ".join(f"{k}: {a} vs {b} rows" for k, (a, b) in vocab.items())
            + "); norms cover the shared rows only"
        )
    return DeltaReport(
        sft=str(sft.folder),
        aligned=str(aligned.folder),
        rows=rows,
        totals=totals,
        warnings=warnings,
        vocab_mismatches=vocab,
    )
