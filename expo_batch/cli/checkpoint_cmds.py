"""`expo-batch extrapolate` and `expo-batch inspect`: one pair of checkpoints, by hand."""

from __future__ import annotations

from pathlib import Path

import typer

_DTYPES = ("bf16", "fp16", "fp32")
_VOCAB_POLICIES = ("error", "copy-extra")


def _pair_folders(
    sft: str, aligned: str, *, output_dir: Path, vocab_policy: str = "error",
    trust_remote_code: bool = False,
) -> tuple[Path, Path, dict]:  # fmt: skip
    """SFT/ALIGNED arguments (local folders, `org/name` or `org/name@revision`) as folders:
    Hub refs are pinned to their commit, checked from their headers, then fetched."""
    from expo_batch.errors import UsageError
    from expo_batch.hub import fetch_pair
    from expo_batch.refs import parse_ref

    refs = []
    for text, flag in ((sft, "SFT"), (aligned, "ALIGNED")):
        path = Path(text).expanduser()
        if path.exists() and not path.is_dir():
            raise UsageError(f"{flag} {text!r} is a file; give the checkpoint folder")
        try:
            ref = parse_ref(text)
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from None
        if ref.is_local and not ref.path.is_dir():
            raise UsageError(
                f"{flag} {text!r} is not a local folder",
                "give a checkpoint folder, or a Hub id such as 'org/name' or 'org/name@revision'",
            )
        refs.append(ref)
    return fetch_pair(
        refs[0], refs[1], output_dir=output_dir, vocab_policy=vocab_policy,
        trust_remote_code=trust_remote_code,
    )  # fmt: skip


_REF_HELP = "a local folder, org/name or org/name@revision"


def extrapolate(
    sft: str = typer.Argument(..., help=f"SFT checkpoint (theta0): {_REF_HELP}."),
    aligned: str = typer.Argument(..., help=f"Aligned checkpoint (theta1): {_REF_HELP}."),
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
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code",
        help="Also fetch and copy the model's own *.py code (Hub refs).",
    ),
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
    sft_dir, aligned_dir, provenance = _pair_folders(
        sft, aligned, output_dir=output.parent.resolve(), vocab_policy=vocab_policy,
        trust_remote_code=trust_remote_code,
    )  # fmt: skip

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
        provenance=provenance,
        trust_remote_code=trust_remote_code,
        progress=progress,
    )
    err.print(f"[green]wrote[/green] {path} (alpha={alpha:g})", highlight=False)
    out.print(str(path), highlight=False, soft_wrap=True)


def inspect(
    sft: str = typer.Argument(..., help=f"SFT checkpoint (theta0): {_REF_HELP}."),
    aligned: str = typer.Argument(..., help=f"Aligned checkpoint (theta1): {_REF_HELP}."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    top: int = typer.Option(
        20, "--top", help="Rows in the table, largest normalized delta first (0: all)."
    ),
) -> None:
    """Delta norms between two checkpoints, per tensor and for the whole model."""
    sft_dir, aligned_dir, _ = _pair_folders(sft, aligned, output_dir=Path.cwd())

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
