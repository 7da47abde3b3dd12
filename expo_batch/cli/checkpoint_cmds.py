"""`expo-batch extrapolate` and `expo-batch inspect`: one pair of checkpoints, by hand."""

from __future__ import annotations

from pathlib import Path

import typer

_DTYPES = ("bf16", "fp16", "fp32")
_VOCAB_POLICIES = ("error", "copy-extra")


def _resolve_local(text: str, role: str = "model") -> Path:
    """The folder a SFT/ALIGNED argument names. (The Hub edge resolves Hub ids here later.)"""
    from expo_batch.errors import UsageError

    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UsageError(f"{role} {text!r} is a file; give the checkpoint folder")
    raise UsageError(
        f"{role} {text!r} is not a local folder",
        "this command takes local checkpoint folders (download Hub models first)",
    )


def extrapolate(
    sft: str = typer.Argument(..., help="SFT checkpoint (theta0): a local folder."),
    aligned: str = typer.Argument(..., help="Aligned checkpoint (theta1): a local folder."),
    alpha: float = typer.Option(
        ...,
        "--alpha",
        help="theta1 + alpha*(theta1 - theta0); > 0 extrapolates, -1..0 interpolates, 0 copies.",
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Folder to write (replaced if it exists)."
    ),
    dtype: str = typer.Option(
        None, "--dtype", help="Output dtype: bf16, fp16 or fp32 (default: the aligned model's)."
    ),
    vocab_policy: str = typer.Option(
        "error",
        "--vocab-policy",
        help="error, or copy-extra: extrapolate shared vocabulary rows, copy the aligned extras.",
    ),
    max_shard_size: str = typer.Option(
        None, "--max-shard-size", help="e.g. 5GB (default: the aligned model's largest shard)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """Write the extrapolated model for one alpha as a Hugging Face folder."""
    from expo_batch.errors import UsageError

    if dtype is not None and dtype.lower() not in _DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    if vocab_policy not in _VOCAB_POLICIES:
        raise UsageError(
            f"--vocab-policy {vocab_policy!r} is not one of {', '.join(_VOCAB_POLICIES)}"
        )
    if max_shard_size is not None:
        from expo_batch.checkpoint import parse_size

        try:
            parse_size(max_shard_size)
        except ValueError as e:
            raise UsageError(f"--max-shard-size: {e}") from None
    sft_dir = _resolve_local(sft, "SFT model")
    aligned_dir = _resolve_local(aligned, "aligned model")

    from expo_batch.console import err, out
    from expo_batch.extrapolate import extrapolate_checkpoint

    path = extrapolate_checkpoint(
        sft_dir,
        aligned_dir,
        alpha,
        output,
        dtype=dtype.lower() if dtype else None,
        vocab_policy=vocab_policy,
        max_shard_size=max_shard_size,
        progress=progress,
    )
    err.print(f"[green]wrote[/green] {path} (alpha={alpha:g})", highlight=False)
    out.print(str(path), highlight=False, soft_wrap=True)


def inspect(
    sft: str = typer.Argument(..., help="SFT checkpoint (theta0): a local folder."),
    aligned: str = typer.Argument(..., help="Aligned checkpoint (theta1): a local folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    top: int = typer.Option(
        20, "--top", help="Rows in the table, largest normalized delta first (0: all)."
    ),
) -> None:
    """Delta norms between two checkpoints, per tensor and for the whole model."""
    sft_dir = _resolve_local(sft, "SFT model")
    aligned_dir = _resolve_local(aligned, "aligned model")

    from expo_batch.checkpoint import Checkpoint
    from expo_batch.console import out, warn
    from expo_batch.diagnostics import delta_diagnostics

    with Checkpoint.open(sft_dir) as s, Checkpoint.open(aligned_dir) as a:
        report = delta_diagnostics(s, a)
    if as_json:
        import json

        out.out(json.dumps(report.to_dict(), indent=2), highlight=False)
    else:
        out.print(_table(report, top))
    for w in report.warnings:
        warn(w)


def _table(report, top: int):
    from rich.table import Table

    t = report.totals
    rows = sorted(report.rows, key=lambda r: -r.normalized)
    shown = rows if top <= 0 else rows[:top]
    title = (
        f"delta theta1 - theta0: {t.n_tensors} tensors, {t.numel:,} elements; "
        f"normalized {t.normalized:.3e}, relative {t.relative:.3e}, "
        f"changed {t.changed_fraction:.1%}"
    )
    if len(shown) < len(rows):
        title += f" (top {len(shown)} of {len(rows)} by normalized norm)"
    table = Table(title=title, title_justify="left")
    table.add_column("tensor", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("dtype")
    for col in ("||delta||", "normalized", "relative", "changed"):
        table.add_column(col, justify="right")
    for r in shown:
        table.add_row(
            r.name,
            "x".join(map(str, r.shape)),
            r.dtype,
            f"{r.delta_norm:.3e}",
            f"{r.normalized:.3e}",
            f"{r.relative:.3e}",
            f"{r.changed_fraction:.1%}",
        )
    table.add_section()
    table.add_row(
        "[bold]total[/bold]",
        "",
        "",
        f"{t.delta_norm:.3e}",
        f"{t.normalized:.3e}",
        f"{t.relative:.3e}",
        f"{t.changed_fraction:.1%}",
    )
    return table


def register(app: typer.Typer) -> None:
    app.command("extrapolate")(extrapolate)
    app.command("inspect")(inspect)
