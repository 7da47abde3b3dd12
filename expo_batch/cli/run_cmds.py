"""`expo-batch run` and `expo-batch status`."""

from __future__ import annotations

from pathlib import Path

import typer

from expo_batch.cli.manifest_cmds import ONLY_HELP


def run(
    manifest: Path = typer.Argument(..., help="The registry.yaml to run."),
    only: list[str] = typer.Option(None, "--only", help=ONLY_HELP),
    output: Path = typer.Option(
        None, "--output", help="Parent folder of the run (default: the manifest's output_dir)."
    ),
    name: str = typer.Option(
        None, "--name", help="Run name (default: the manifest's name or file stem)."
    ),
    fresh: bool = typer.Option(
        False, "--fresh", help="Forget what the ledger has for the selected pairs and redo them."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan and what the ledger says is done; run nothing."
    ),
) -> None:
    """Run every selected pair: resolve, fetch, preflight, sweep, select, materialize, card."""
    from expo_batch.console import err, out
    from expo_batch.manifest import load_manifest
    from expo_batch.plan import build_plan

    plan = build_plan(load_manifest(manifest), only, output, name)
    if dry_run:
        from rich.table import Table

        from expo_batch.pipeline import dry_run_rows

        out.print(f"run folder: {plan.run_dir}")
        table = Table("pair", "unit", "ledger")
        for pair, unit, state in dry_run_rows(plan):
            table.add_row(pair, unit, state)
        out.print(table)
        return
    from expo_batch.pipeline import run as run_pipeline
    from expo_batch.progress import RunProgress

    summary = run_pipeline(plan, fresh=fresh, progress=RunProgress(enabled=True))
    from rich.table import Table

    from expo_batch.layout import alpha_label

    table = Table(
        "pair",
        "result",
        "chosen alpha",
        "gain",
        "computed",
        "skipped",
        title="run summary",
        title_justify="left",
    )
    for o in summary.outcomes:
        result = {"done": "[green]done[/green]", "skipped": "up to date"}.get(
            o.state, "[red]failed[/red]"
        )
        table.add_row(
            o.name,
            result,
            alpha_label(o.chosen_alpha)
            if o.chosen_alpha is not None
            else ("" if o.state == "failed" else "none"),
            f"{o.gain:+.4f}" if o.gain is not None else "",
            str(len(o.computed)),
            str(len(o.skipped)),
        )
    err.print(table)
    for o in summary.failed:
        err.print(f"[red]{o.name}[/red]: {o.error}", highlight=False)
    err.print(
        f"{summary.count('done')} done, {summary.count('skipped')} skipped (already done), "
        f"{summary.count('failed')} failed; results in {summary.run_dir}"
    )
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def status(
    run_dir: Path = typer.Argument(
        None, help="A run folder (default: the latest under ./outputs)."
    ),
) -> None:
    """Per pair: stage, alphas done, best so far, errors."""
    from rich.table import Table

    from expo_batch.console import out
    from expo_batch.layout import alpha_label
    from expo_batch.status import format_alphas, run_status

    run_dir = run_dir or latest_run()
    rows = run_status(run_dir)
    table = Table(
        "pair",
        "state",
        "stage",
        "alphas scored",
        "best alpha",
        "best reward",
        "error",
        title=str(run_dir),
        title_justify="left",
    )
    for r in rows:
        table.add_row(
            r.pair,
            r.state,
            r.stage,
            format_alphas(r.alphas_done),
            alpha_label(r.best_alpha) if r.best_alpha is not None else "",
            f"{r.best_reward:.4f}" if r.best_reward is not None else "",
            _first_line(r.error),
        )
    out.print(table)


def _first_line(text: str | None, limit: int = 120) -> str:
    line = (text or "").strip().splitlines()[0] if text and text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def latest_run(base: Path = Path("outputs")) -> Path:
    """The most recently modified run folder under ``base``."""
    from expo_batch.errors import UsageError

    runs = [p.parent for p in base.glob("*/ledger.sqlite")] if base.is_dir() else []
    if not runs:
        raise UsageError(
            f"no run folder under {base}/",
            "give RUN_DIR, or start a run with `expo-batch run MANIFEST`",
        )
    return max(runs, key=lambda p: (p / "ledger.sqlite").stat().st_mtime)


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(status)
