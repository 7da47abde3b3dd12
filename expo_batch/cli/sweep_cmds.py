"""`expo-batch sweep`: generate and score every alpha of one pair, print the metrics per alpha."""

from __future__ import annotations

from pathlib import Path

import typer


def _parse_grid(text: str) -> tuple[float, ...]:
    from expo_batch.errors import UsageError

    try:
        values = tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise UsageError(
            f"--grid {text!r}: give comma-separated numbers, e.g. --grid 0,0.1,0.3,0.5"
        ) from None
    if any(a <= -1 for a in values):
        raise UsageError(f"--grid {text!r}: alpha must be greater than -1")
    return values


def _prompts_config(text: str | None, split: str, limit: int | None):
    from expo_batch.manifest import PromptsConfig

    if text is None:
        return PromptsConfig(
            dataset="HuggingFaceH4/ultrafeedback_binarized", split=split, limit=limit
        )
    path = Path(text).expanduser()
    if path.exists() or text.endswith((".json", ".jsonl")):
        return PromptsConfig(path=path.resolve(), limit=limit)
    dataset, _, revision = text.partition("@")
    return PromptsConfig(dataset=dataset, split=split, revision=revision or None, limit=limit)


def _scorer_config(text: str, batch_size: int, dtype: str):
    from expo_batch.manifest import ScorerConfig
    from expo_batch.refs import looks_local

    if ":" in text and "/" not in text and not looks_local(text):
        return ScorerConfig(function=text, batch_size=batch_size, dtype=dtype)
    return ScorerConfig(model=text, batch_size=batch_size, dtype=dtype)


def _local_dir(text: str, flag: str) -> Path:
    from expo_batch.errors import UsageError

    path = Path(text).expanduser()
    if not path.is_dir():
        raise UsageError(
            f"{flag} {text!r} is not a local folder",
            "sweep works on local checkpoint folders; download Hub models first "
            "(or use `expo-batch run`)",
        )
    return path.resolve()


def metrics_table(results: list[dict], title: str | None = None):
    from rich.table import Table

    def num(v, fmt="{:.4f}"):
        return "" if v is None else fmt.format(v)

    def pct(v):
        return "" if v is None else f"{100 * v:.1f}%"

    best = max(
        (r for r in results if r.get("mean_reward") is not None),
        key=lambda r: r["mean_reward"],
        default=None,
    )
    table = Table(title=title, title_justify="left")
    for col in ("alpha", "n", "mean reward", "stderr", "mean length", "truncated", "degenerate"):
        table.add_column(col, justify="right")
    for r in results:
        mark = " *" if best is not None and r is best else ""
        table.add_row(
            r["label"] + mark,
            str(r["n"]),
            num(r["mean_reward"]),
            num(r["stderr"]),
            num(r["mean_length"], "{:.1f}"),
            pct(r["truncation_rate"]),
            pct(r["degenerate_rate"]),
        )
    return table


def sweep(
    sft: str = typer.Argument(..., help="SFT checkpoint folder (theta0)."),
    aligned: str = typer.Argument(..., help="Aligned checkpoint folder (theta1)."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Folder for the records (alpha-*/ inside)."
    ),
    grid: str = typer.Option(
        "0,0.1,0.2,0.3,0.4,0.5", "--grid", help="Comma-separated alphas; 0 is always included."
    ),
    prompts: str = typer.Option(
        None,
        "--prompts",
        help="A .jsonl/.json file, or a Hub dataset id[@revision] "
        "(default: UltraFeedback test_gen).",
    ),
    split: str = typer.Option("test_gen", "--split", help="Dataset split (Hub datasets only)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Use only the first N prompts."),
    max_tokens: int = typer.Option(
        2048, "--max-tokens", min=1, help="Maximum answer length in tokens."
    ),
    seed: int = typer.Option(42, "--seed", help="Sampling seed."),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="0 = greedy."),
    stop_token_ids: str = typer.Option(
        "",
        "--stop-token-ids",
        help="Extra stop token ids, comma-separated (the model's EOS always stops).",
    ),
    scorer: str = typer.Option(
        "weqweasdas/RM-Mistral-7B",
        "--scorer",
        help="Reward model (folder, org/name[@rev]) or module:function.",
    ),
    scorer_batch_size: int = typer.Option(8, "--scorer-batch-size", min=1),
    backend: str = typer.Option("transformers", "--backend", help="transformers or vllm."),
    batch_size: int = typer.Option(
        16, "--batch-size", min=1, help="Prompts per generation batch and per recorded chunk."
    ),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto, bfloat16, float16 or float32 (policy and reward model)."
    ),
    device: str = typer.Option(
        None, "--device", help="cpu, cuda, cuda:1 (default: cuda when available)."
    ),
    low_memory: bool = typer.Option(
        False, "--low-memory", help="Generate all candidates, free the policy, then score."
    ),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
) -> None:
    """Generate and score every alpha of one pair, switching weights in place; print the metrics."""
    from pydantic import ValidationError

    from expo_batch.console import err, out
    from expo_batch.errors import UsageError
    from expo_batch.manifest import SamplingConfig, Settings
    from expo_batch.sweep import sweep_alphas, sweep_pair

    alphas = _parse_grid(grid)
    try:
        stops = [int(t) for t in stop_token_ids.replace(" ", "").split(",") if t]
    except ValueError:
        raise UsageError(
            f"--stop-token-ids {stop_token_ids!r}: give comma-separated integers"
        ) from None
    try:
        settings = Settings(
            alphas=tuple(a for a in alphas if a != 0) or (0.1,),
            dtype=dtype,
            prompts=_prompts_config(prompts, split, limit),
            sampling=SamplingConfig(max_tokens=max_tokens, seed=seed, temperature=temperature),
            scorer=_scorer_config(scorer, scorer_batch_size, dtype),
            backend=backend,
            batch_size=batch_size,
        )
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise UsageError(f"invalid option: {problems}") from None
    sft_dir, aligned_dir = _local_dir(sft, "SFT"), _local_dir(aligned, "ALIGNED")
    grid_all = sweep_alphas(alphas)
    err.print(
        f"sweep: {len(grid_all)} candidates ({', '.join(f'{a:g}' for a in grid_all)}) -> {output}"
    )

    def on_event(stage: str, alpha: float, done: int, total: int) -> None:
        err.print(f"  alpha {alpha:g} {stage}: {done}/{total}", highlight=False)

    results = sweep_pair(
        sft_dir, aligned_dir, alphas, settings, stops, output,
        low_memory=low_memory, trust_remote_code=trust_remote_code, device=device,
        on_event=on_event,
    )  # fmt: skip
    out.print(
        metrics_table(results, title=f"{aligned_dir.name} vs {sft_dir.name} (* = best mean reward)")
    )


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
