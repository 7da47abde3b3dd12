"""Choosing alpha: per-candidate rewards in, a decision out. Pure: no I/O, no models.

The paper's rule: the candidate with the highest mean reward on the grid, or none when no
candidate beats the unmodified aligned model (alpha 0), as in the paper's N/A rows. Beyond the
paper: a paired bootstrap confidence interval of the gain over the baseline on the same prompts,
an optional guard against reward bought with runaway answers, and refinement around the best.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from expo_batch.layout import alpha_label
from expo_batch.manifest import SelectionConfig


def paired_bootstrap_ci(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of mean(candidate - baseline), resampling prompts (pairs stay together)."""
    if len(baseline) != len(candidate):
        raise ValueError(f"paired samples differ in length: {len(baseline)} vs {len(candidate)}")
    diff = torch.tensor(candidate, dtype=torch.float64) - torch.tensor(
        baseline, dtype=torch.float64
    )
    n = diff.numel()
    if n == 0:
        return (float("nan"), float("nan"))
    g = torch.Generator().manual_seed(seed)
    means = torch.empty(samples, dtype=torch.float64)
    step = max(1, 4_000_000 // n)  # bound memory: at most ~4M indices at a time
    for start in range(0, samples, step):
        k = min(step, samples - start)
        idx = torch.randint(0, n, (k, n), generator=g)
        means[start : start + k] = diff[idx].mean(dim=1)
    tail = (1 - confidence) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return (lo, hi)


def _guard(m: Mapping[str, Any], base: Mapping[str, Any], cfg: SelectionConfig) -> str | None:
    checks = (
        ("truncation_rate", cfg.max_truncation_increase, "truncation rate"),
        ("degenerate_rate", cfg.max_degenerate_increase, "degenerate-output rate"),
    )
    for key, limit, label in checks:
        if limit is None:
            continue
        jump = float(m.get(key, 0.0)) - float(base.get(key, 0.0))
        if jump > limit:
            return f"{label} {m.get(key, 0.0):.3f} is {jump:+.3f} over the baseline (limit {limit})"
    return None


def select_alpha(
    rewards: Mapping[float, Mapping[str, float]],
    metrics: Mapping[float, Mapping[str, Any]],
    cfg: SelectionConfig,
    *,
    strategy: str = "grid",
    seed: int = 0,
) -> dict[str, Any]:
    """Pick the best alpha.

    Args:
        rewards: per alpha, reward per prompt id. Must contain alpha 0 (the baseline).
        metrics: per alpha, the candidate's metrics (mean_reward, truncation_rate, ...).
        cfg: the selection settings (min gain, guards, bootstrap).

    Returns:
        The ``selection`` object of sweep.json: chosen_alpha (or None), reason, baseline_mean,
        chosen_mean, gain, ci_low/ci_high (paired bootstrap on shared prompts), rejected.
    """
    if 0.0 not in rewards:
        raise ValueError("the baseline (alpha 0) has no rewards")
    base_r = rewards[0.0]
    base_m = metrics[0.0]
    baseline_mean = float(base_m["mean_reward"])
    rejected: list[dict[str, Any]] = []
    eligible: list[float] = []
    for alpha in sorted(a for a in rewards if a != 0.0):
        why = _guard(metrics[alpha], base_m, cfg)
        if why:
            rejected.append({"alpha": alpha, "reason": why})
        else:
            eligible.append(alpha)
    result: dict[str, Any] = {
        "chosen_alpha": None,
        "reason": "",
        "baseline_mean": baseline_mean,
        "chosen_mean": None,
        "gain": None,
        "ci_low": None,
        "ci_high": None,
        "confidence": cfg.confidence,
        "strategy": strategy,
        "rejected": rejected,
    }
    if not eligible:
        result["reason"] = "no candidate passed the guards" if rejected else "no candidates"
        return result
    # Highest mean; ties go to the smaller alpha (the smaller change to the released model).
    best = max(eligible, key=lambda a: (float(metrics[a]["mean_reward"]), -a))
    best_mean = float(metrics[best]["mean_reward"])
    gain = best_mean - baseline_mean
    shared = sorted(set(base_r) & set(rewards[best]))
    lo, hi = paired_bootstrap_ci(
        [base_r[k] for k in shared],
        [rewards[best][k] for k in shared],
        samples=cfg.bootstrap_samples,
        confidence=cfg.confidence,
        seed=seed,
    )
    result.update(gain=gain, ci_low=lo, ci_high=hi, best_alpha=best, best_mean=best_mean)
    if gain <= cfg.min_gain:
        result["reason"] = (
            f"no alpha beats the baseline: best is {alpha_label(best)} with "
            f"{best_mean:.4f} vs {baseline_mean:.4f}"
        )
        return result
    result.update(
        chosen_alpha=best,
        chosen_mean=best_mean,
        reason=f"highest mean reward of {len(eligible)} candidates",
    )
    return result


def refine_alphas(evaluated: Sequence[float], best: float, step: float) -> list[float]:
    """Next alphas around ``best`` (one step either side), skipping evaluated ones and <= -1.

    The paper's Appendix B searches coarse-to-fine by hand; this is that, automated.
    """
    done = {round(a, 9) for a in evaluated}
    out = []
    for a in (best - step, best + step):
        a = round(a, 9)
        if a > -1 and a != 0 and a not in done:
            out.append(a)
    return sorted(out)
