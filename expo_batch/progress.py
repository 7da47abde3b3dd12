"""Progress of a batch run on stderr (rich): pairs overall, the current stage, the candidate."""

from __future__ import annotations

from typing import Any


class RunProgress:
    """Three lines: pairs done of total; the current pair and stage; the current candidate
    with its rate and ETA. Disabled (a no-op) for library use and tests."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress: Any = None
        self._pairs: Any = None
        self._stage: Any = None
        self._candidate: Any = None
        self._pair = ""

    def __enter__(self) -> RunProgress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            from expo_batch.console import err

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def start_run(self, n_pairs: int) -> None:
        if self._progress is not None:
            self._pairs = self._progress.add_task("pairs", total=n_pairs, rate="")
            self._stage = self._progress.add_task("", total=None, rate="")

    def pair_done(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._pairs)

    def start_pair(self, name: str) -> None:
        self._pair = name
        self.stage("start")

    def stage(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._stage, description=f"{self._pair}: {text}")

    def candidate(self, text: str, total: int) -> Any:
        if self._progress is None:
            return None
        if self._candidate is not None:
            self._progress.remove_task(self._candidate)
        self.stage(text)
        self._candidate = self._progress.add_task(f"  {text}", total=total, rate="")
        return self._candidate

    def update(self, task: Any, done: int) -> None:
        if self._progress is None or task is None:
            return
        self._progress.update(task, completed=done)
        t = self._progress.tasks[[x.id for x in self._progress.tasks].index(task)]
        if t.speed:
            self._progress.update(task, rate=f"{t.speed:.2f} prompts/s")
