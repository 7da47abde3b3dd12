"""`expo-batch validate` and `expo-batch plan`: read a manifest, say what it means."""

from __future__ import annotations

from pathlib import Path

import typer

ONLY_HELP = "Select pairs by name, glob ('tulu2-*') or tag ('simpo'); repeat or comma-separate."


def validate(
    manifest: Path = typer.Argument(..., help="The registry.yaml to check."),
    only: list[str] = typer.Option(None, "--only", help=ONLY_HELP),
) -> None:
    """Check a manifest and list the pairs it selects."""
    from rich.table import Table

    from expo_batch.console import err, out
    from expo_batch.manifest import load_manifest, select_pairs
    from expo_batch.plan import grid_text

    m = load_manifest(manifest)
    pairs = select_pairs(m.pairs, only)
    table = Table(title=f"{manifest}: {len(pairs)} of {len(m.pairs)} pairs", title_justify="left")
    table.add_column("pair", no_wrap=True)
    for col in ("sft (theta0)", "aligned (theta1)", "algorithm", "tags", "alphas"):
        table.add_column(col, overflow="fold")
    for p in pairs:
        flags = " [remote code]" if p.spec.trust_remote_code else ""
        table.add_row(
            p.name,
            p.spec.sft,
            p.spec.aligned + flags,
            p.spec.algorithm or "",
            ", ".join(p.spec.tags),
            grid_text(p.settings.alphas),
        )
    out.print(table)
    err.print(f"[green]ok[/green]: {manifest} is valid ({len(m.pairs)} pairs)")


def plan(
    manifest: Path = typer.Argument(..., help="The registry.yaml to plan."),
    only: list[str] = typer.Option(None, "--only", help=ONLY_HELP),
    output: Path = typer.Option(
        None, "--output", help="Parent folder of the run (default: the manifest's output_dir)."
    ),
    preflight: bool = typer.Option(
        True,
        "--preflight/--no-preflight",
        help="Resolve revisions and check each pair on the Hub (headers only, nothing downloaded).",
    ),
) -> None:
    """Show what a run would do: pairs, candidates, backends, output paths, and the preflight."""
    from rich.table import Table

    from expo_batch.console import out
    from expo_batch.manifest import load_manifest
    from expo_batch.plan import build_plan, grid_text

    m = load_manifest(manifest)
    run = build_plan(m, only, output)
    out.print(f"run folder: {run.run_dir}")
    table = Table(title_justify="left")
    table.add_column("pair", no_wrap=True)
    for col in ("candidates (alpha 0 = baseline)", "backend", "scorer", "prompts", "output"):
        table.add_column(col, overflow="fold")
    for pp in run.pairs:
        s = pp.pair.settings
        prompts = (
            str(s.prompts.path) if s.prompts.path else f"{s.prompts.dataset}:{s.prompts.split}"
        )
        if s.prompts.limit:
            prompts += f" (first {s.prompts.limit})"
        table.add_row(
            pp.name,
            grid_text(pp.candidates),
            s.backend,
            s.scorer.model or s.scorer.function or "",
            prompts,
            str(pp.output),
        )
    out.print(table)
    if preflight:
        from expo_batch.preflight_report import print_preflight

        if not print_preflight(run):
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.command()(plan)
