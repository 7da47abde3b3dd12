"""What a run would do, before it does anything: pairs, candidates, backends, output paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expo_batch.layout import RunLayout, alpha_label
from expo_batch.manifest import Manifest, Pair, select_pairs


@dataclass(frozen=True)
class PairPlan:
    pair: Pair
    candidates: tuple[float, ...]
    """Alpha 0 (the baseline) first, then the grid."""
    output: Path

    @property
    def name(self) -> str:
        return self.pair.name


@dataclass(frozen=True)
class RunPlan:
    manifest: Manifest
    run_dir: Path
    pairs: tuple[PairPlan, ...]

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)


def run_dir_for(manifest: Manifest, output: Path | None = None, name: str | None = None) -> Path:
    """outputs/<run>: the manifest's stem (or ``name``) under ``output`` or the manifest's output_dir."""
    base = Path(output) if output is not None else manifest.output_dir
    return (base / (name or manifest.stem)).resolve()


def build_plan(
    manifest: Manifest,
    only: list[str] | None = None,
    output: Path | None = None,
    name: str | None = None,
) -> RunPlan:
    run_dir = run_dir_for(manifest, output, name)
    layout = RunLayout(run_dir)
    plans = tuple(
        PairPlan(
            pair=p,
            candidates=candidates(p.settings.alphas),
            output=layout.pair(p.name).root,
        )
        for p in select_pairs(manifest.pairs, only)
    )
    return RunPlan(manifest=manifest, run_dir=run_dir, pairs=plans)


def candidates(alphas: tuple[float, ...]) -> tuple[float, ...]:
    """The baseline alpha 0 plus the grid, baseline first, no duplicates."""
    return (0.0, *(a for a in alphas if a != 0))


def grid_text(alphas: tuple[float, ...]) -> str:
    return ", ".join(alpha_label(a) for a in alphas)
