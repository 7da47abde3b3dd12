"""``expo-batch report`` and ``expo-batch publish``: a run's results, for people and the Hub."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(
        run_dirs: list[Path] = typer.Argument(
            None,
            help="Run folder(s); several are compared side by side. "
            "Default: the most recently modified run under ./outputs.",
            show_default=False,
        ),
        fmt: str = typer.Option(
            "table", "--format", "-f", help="table, markdown, csv, json or latex."
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="Write to this file instead of stdout."
        ),
    ) -> None:
        """The cross-pair results table (also of partial runs, or several runs side by side).

        Baseline and chosen reward, gain with its interval, answer length and truncation
        before/after, and the paper's values when the manifest has them.
        """
        from expo_batch import report
        from expo_batch.console import err, out
        from expo_batch.errors import UsageError
        from expo_batch.io import atomic_write_text

        if fmt not in report.FORMATS:
            raise UsageError(
                f"--format {fmt!r} is not a format", f"use one of: {', '.join(report.FORMATS)}"
            )
        dirs = list(run_dirs or []) or [report.latest_run(Path("outputs"))]
        rows = report.collect(dirs[0]) if len(dirs) == 1 else report.collect_many(dirs)
        if output is not None:
            atomic_write_text(output, report.render(rows, fmt))  # type: ignore[arg-type]
            err.print(f"wrote {output}", highlight=False)
        elif fmt == "table":
            title = report.run_name(dirs[0]) if len(dirs) == 1 else None
            report.print_table(rows, out, title=title)
        else:
            out.file.write(report.render(rows, fmt))  # type: ignore[arg-type]
            out.file.flush()

    @app.command("publish")
    def publish_cmd(
        run_dir: Path = typer.Argument(..., help="The run folder."),
        namespace: str = typer.Option(
            ..., "--namespace", help="Hub user or organization to publish under."
        ),
        only: list[str] = typer.Option(
            None,
            "--only",
            help="Pair names, globs ('tulu2-*') or tags; repeatable or comma-separated.",
        ),
        private: bool = typer.Option(False, "--private", help="Create new repos as private."),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Say what would be uploaded where; upload nothing."
        ),
    ) -> None:
        """Upload each pair whose selection chose an alpha to the Hub, one repo per pair.

        Repos are NAMESPACE/<aligned-name>-ExPO (or the manifest's publish_name); a repo that
        already holds the same fingerprint is skipped.
        """
        from expo_batch import publish
        from expo_batch.console import out

        outcomes = publish.publish_run(
            run_dir, namespace=namespace, only=only or None, private=private, dry_run=dry_run
        )
        for o in outcomes:
            head = f"{o.pair}: {o.status}"
            if o.repo_id:
                head += f" -> {o.repo_id}"
            out.print(head, highlight=False, markup=False)
            if o.detail:
                for line in o.detail.splitlines():
                    out.print(f"  {line}", highlight=False, markup=False)
        out.print(publish.summary(outcomes), highlight=False, markup=False)
        if any(o.status == "failed" for o in outcomes):
            raise typer.Exit(1)
