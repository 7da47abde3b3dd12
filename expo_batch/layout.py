"""Where every artifact of a run lives: the one place that knows the folder layout.

outputs/<run>/
  ledger.sqlite, run.log, results.{md,csv,json}, summary.png
  pairs/<pair>/
    pair.json       the pair as run: spec, effective settings, resolved revisions
    preflight.json  compatibility, sizes, delta diagnostics
    alpha-0.30/generations.jsonl, rewards.jsonl, metrics.json
    sweep.json      every candidate's metrics and the selection
    sweep.png
    model/        the selected checkpoint with its README.md card
    exports/      answers for the official judges
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def alpha_label(alpha: float) -> str:
    """Canonical text of an alpha for folder names and tables: 0.3 -> '0.30', 2.5 -> '2.50'.

    Two decimals unless the value needs more (0.125 -> '0.125'); -0.0 is written '0.00'.
    """
    alpha = float(alpha) + 0.0
    two = f"{alpha:.2f}"
    return two if float(two) == alpha else f"{alpha:.6g}"


@dataclass(frozen=True)
class CandidateLayout:
    root: Path

    @property
    def generations(self) -> Path:
        return self.root / "generations.jsonl"

    @property
    def rewards(self) -> Path:
        return self.root / "rewards.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"


@dataclass(frozen=True)
class PairLayout:
    root: Path

    def candidate(self, alpha: float) -> CandidateLayout:
        return CandidateLayout(self.root / f"alpha-{alpha_label(alpha)}")

    @property
    def preflight(self) -> Path:
        return self.root / "preflight.json"

    @property
    def sweep(self) -> Path:
        return self.root / "sweep.json"

    @property
    def pair_json(self) -> Path:
        return self.root / "pair.json"

    @property
    def sweep_plot(self) -> Path:
        return self.root / "sweep.png"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def exports(self) -> Path:
        return self.root / "exports"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def pair(self, name: str) -> PairLayout:
        return PairLayout(self.root / "pairs" / name)

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def manifest_copy(self) -> Path:
        return self.root / "manifest.yaml"

    def results(self, ext: str) -> Path:
        return self.root / f"results.{ext}"

    @property
    def summary_plot(self) -> Path:
        return self.root / "summary.png"
