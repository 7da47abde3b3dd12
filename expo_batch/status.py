"""`expo-batch status`: where each pair of a run stands, from the ledger and the records."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expo_batch.io import read_json
from expo_batch.layout import RunLayout, alpha_label
from expo_batch.ledger import STAGES, Ledger


@dataclass
class PairStatus:
    pair: str
    stage: str
    state: str  # done | failed | running | pending
    alphas_done: list[float]
    best_alpha: float | None
    best_reward: float | None
    error: str | None


def run_status(run_dir: Path) -> list[PairStatus]:
    layout = RunLayout(Path(run_dir))
    if not layout.ledger.exists():
        from expo_batch.errors import UsageError

        raise UsageError(
            f"{run_dir} has no ledger.sqlite: not a run folder, or the run never started"
        )
    run_json = layout.root / "run.json"
    with Ledger(layout.ledger) as ledger:
        names = read_json(run_json)["pairs"] if run_json.exists() else ledger.pair_names()
        return [_pair_status(layout, ledger, n) for n in names]


def _pair_status(layout: RunLayout, ledger: Ledger, name: str) -> PairStatus:
    units = ledger.units(name)
    failed = [u for u in units if u.state == "failed"]
    done_alphas, best, best_r = [], None, None
    for u in units:
        if u.unit.startswith("score@") and u.state == "done":
            m = u.info
            alpha = float(m.get("alpha", u.unit.split("@", 1)[1]))
            done_alphas.append(alpha)
            r = m.get("mean_reward")
            if r is not None and (best_r is None or r > best_r):
                best, best_r = alpha, r
    order = {s: i for i, s in enumerate(STAGES)}
    reached = max((order.get(u.stage, -1) for u in units), default=-1)
    stage = STAGES[reached] if reached >= 0 else "not started"
    card = next((u for u in units if u.unit == "card"), None)
    if failed:
        state = "failed"
    elif card is not None and card.state == "done":
        state = "done"
    elif any(u.state == "running" for u in units):
        state = "interrupted" if not _is_live(layout) else "running"
    else:
        state = "pending"
    sweep = layout.pair(name).sweep
    if state == "done" and sweep.exists():
        sel = read_json(sweep)["selection"]
        best = sel["chosen_alpha"]
        best_r = sel["chosen_mean"]
    return PairStatus(
        name, stage, state, sorted(done_alphas), best, best_r, failed[-1].error if failed else None
    )


def _is_live(layout: RunLayout) -> bool:
    # A run in progress touches its log; without a lock file we cannot tell more cheaply.
    import time

    return layout.log.exists() and time.time() - layout.log.stat().st_mtime < 60


def format_alphas(alphas: list[float]) -> str:
    return ", ".join(alpha_label(a) for a in alphas)
