"""Plots (matplotlib, Agg backend, PNG): reward against alpha per pair, and gain per pair.

matplotlib is imported inside the functions so that importing the package (and ``--help``)
stays fast; the Agg backend is forced so plotting works on headless machines.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expo_batch.layout import alpha_label

if TYPE_CHECKING:
    from expo_batch.report import Row

_Z = 1.96  # normal 95% interval of a mean from its standard error
_REWARD = "#1f77b4"
_LENGTH = "#7f7f7f"
_CHOSEN = "#d62728"
_PAPER = "#2ca02c"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Save atomically: a PNG appears under its name only when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _pyplot().close(fig)
    return path


def plot_sweep(sweep: dict[str, Any], path: Path, *, paper_alpha: float | None = None) -> Path:
    """Mean reward (with its 95% interval) and mean answer length against alpha, as in Figure 4.

    The baseline (alpha 0, the aligned model) is drawn as a dotted horizontal line and a square
    marker; the chosen alpha as a red star with a vertical line; rejected alphas as crosses; the
    paper's optimal alpha, when known, as a green dashed line. Works for a single candidate, for
    a selection that chose none, and for negative alphas.
    """
    plt = _pyplot()
    cands = sorted(sweep.get("candidates") or [], key=lambda c: c["alpha"])
    sel = sweep.get("selection") or {}
    chosen = sel.get("chosen_alpha")
    rejected = {float(r["alpha"]) for r in sel.get("rejected") or []}
    xs = [float(c["alpha"]) for c in cands]
    ys = [float(c["mean_reward"]) for c in cands]
    half = [_Z * float(c.get("stderr") or 0.0) for c in cands]

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.errorbar(
        xs,
        ys,
        yerr=half,
        color=_REWARD,
        marker="o",
        markersize=4,
        capsize=3,
        linewidth=1.5,
        elinewidth=0.8,
        label="mean reward ± 1.96·stderr",
    )
    base = next((c for c in cands if float(c["alpha"]) == 0.0), None)
    if base is not None:
        ax.axhline(float(base["mean_reward"]), color=_REWARD, linestyle=":", linewidth=1)
        ax.plot(
            [0.0],
            [float(base["mean_reward"])],
            marker="s",
            color="black",
            markersize=6,
            linestyle="none",
            label="baseline (α=0)",
            zorder=5,
        )
    for c in cands:
        if float(c["alpha"]) in rejected:
            ax.plot(
                [c["alpha"]],
                [c["mean_reward"]],
                marker="x",
                color="black",
                markersize=8,
                linestyle="none",
                zorder=5,
            )
    if rejected:
        ax.plot([], [], marker="x", color="black", linestyle="none", label="rejected by a guard")
    if chosen is not None:
        c = next((c for c in cands if float(c["alpha"]) == float(chosen)), None)
        ax.axvline(float(chosen), color=_CHOSEN, linewidth=1, alpha=0.6)
        if c is not None:
            ax.plot(
                [float(chosen)],
                [float(c["mean_reward"])],
                marker="*",
                color=_CHOSEN,
                markersize=14,
                linestyle="none",
                label=f"chosen α={alpha_label(chosen)}",
                zorder=6,
            )
    if paper_alpha is not None:
        ax.axvline(
            float(paper_alpha),
            color=_PAPER,
            linestyle="--",
            linewidth=1,
            label=f"paper α={alpha_label(paper_alpha)}",
        )
    ax.set_xlabel("α  (θ₁ + α·(θ₁ − θ₀))")
    ax.set_ylabel("mean reward", color=_REWARD)
    ax.tick_params(axis="y", labelcolor=_REWARD)
    ax.grid(True, alpha=0.3)

    lengths = [(float(c["alpha"]), c.get("mean_length")) for c in cands]
    lengths = [(x, float(v)) for x, v in lengths if v is not None]
    if lengths:
        ax2 = ax.twinx()
        ax2.plot(
            [x for x, _ in lengths],
            [v for _, v in lengths],
            color=_LENGTH,
            marker=".",
            linestyle="--",
            linewidth=1,
            label="mean length (tokens)",
        )
        ax2.set_ylabel("mean answer length (tokens)", color=_LENGTH)
        ax2.tick_params(axis="y", labelcolor=_LENGTH)
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
    else:
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = [], []
    # Below the axes, so it never hides a point.
    ax.legend(
        handles + h2,
        labels + l2,
        fontsize=7,
        loc="upper center",
        ncol=3,
        bbox_to_anchor=(0.5, -0.16),
        frameon=False,
    )
    if len(xs) == 1:  # a lone point: give the axis some room
        ax.set_xlim(xs[0] - 0.5, xs[0] + 0.5)

    name = sweep.get("pair") or ""
    outcome = (
        f"chosen α = {alpha_label(chosen)}"
        if chosen is not None
        else (sel.get("reason") or "no selection yet")
    )
    ax.set_title(f"{name}: {outcome}" if name else outcome, fontsize=10)
    return _save(fig, path)


def plot_summary(rows: list[Row], path: Path, *, title: str | None = None) -> Path:
    """Reward gain of the chosen alpha per pair with its interval (like Figure 1 of the paper's v1).

    Pairs without a gain are listed with their state (none chosen, pending, failed) at zero, so
    every pair of the run appears. The paper's reported gain, when the manifest has it, is drawn
    as a green diamond (measured on the paper's prompts: a reference, not a like-for-like value).
    """
    plt = _pyplot()
    labels = [f"{r.run}/{r.pair}" if r.run else r.pair for r in rows]
    height = max(2.2, 0.45 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(7.0, height))
    ys = list(range(len(rows)))[::-1]  # first pair at the top
    for y, r in zip(ys, rows, strict=True):
        if r.gain is not None:
            lo = r.gain - r.ci_low if r.ci_low is not None else 0.0
            hi = r.ci_high - r.gain if r.ci_high is not None else 0.0
            color = _REWARD if (r.ci_low is None or r.ci_low > 0) else "#ff7f0e"
            ax.barh(y, r.gain, color=color, alpha=0.8, height=0.6)
            ax.errorbar(
                r.gain,
                y,
                xerr=[[max(lo, 0.0)], [max(hi, 0.0)]],
                color="black",
                capsize=3,
                linewidth=1,
            )
            tag = f"α={alpha_label(r.chosen_alpha)}" if r.chosen_alpha is not None else ""
            ax.annotate(
                tag,
                (max(r.gain, r.ci_high or r.gain), y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        else:
            if r.state == "failed":
                text = "failed"
            elif r.state == "pending":
                text = "pending"
            else:
                text = "no alpha chosen"
            ax.annotate(
                text,
                (0, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
                color="#555555",
                style="italic",
            )
        if r.paper_gain is not None:
            ax.plot([r.paper_gain], [y], marker="D", color=_PAPER, markersize=6, linestyle="none")
    if any(r.paper_gain is not None for r in rows):
        ax.plot([], [], marker="D", color=_PAPER, linestyle="none", label="paper's gain")
        ax.legend(fontsize=7, loc="lower right")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_xlabel("reward gain over the aligned model (chosen α − α=0), with its interval")
    ax.grid(True, axis="x", alpha=0.3)
    if not any(r.gain is not None for r in rows):
        ax.set_xlim(-1, 1)
    else:  # keep the zero line and the italic state labels clear of the frame
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(lo, -0.08 * (hi - lo)), hi)
    ax.set_title(f"ExPO gain per pair: {title}" if title else "ExPO gain per pair", fontsize=10)
    return _save(fig, path)
