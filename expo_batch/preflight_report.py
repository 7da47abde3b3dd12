"""`expo-batch plan`'s preflight: per pair, resolve both refs and check them on the Hub
(headers only, nothing downloaded). A pair that cannot be checked gets its reason, never a
traceback, and the other pairs are still checked."""

from __future__ import annotations

from expo_batch.errors import ExpoError
from expo_batch.plan import PairPlan, RunPlan


def preflight_rows(run: RunPlan) -> list[dict]:
    """One row per pair: ok, download size, disk need, and the detail (problems or verdict).

    (When the Hub is unreachable, the hub module stops retrying after the first failure, so an
    offline machine gets its answer for every pair in seconds.)"""
    return [_row(run, pp) for pp in run.pairs]


def _row(run: RunPlan, pp: PairPlan) -> dict:
    from expo_batch.hub import fmt_bytes, preflight, resolve

    pair = pp.pair
    row = {"pair": pp.name, "ok": False, "download": "", "disk": "", "detail": ""}
    try:
        sft = resolve(pair.sft, where=run.manifest.location(pair, "sft"))
        aligned = resolve(pair.aligned, where=run.manifest.location(pair, "aligned"))
        report = preflight(
            sft,
            aligned,
            output_dir=pp.output,
            vocab_policy=pair.settings.vocab_policy,
            trust_remote_code=pair.spec.trust_remote_code,
        )
    except ExpoError as e:
        row["detail"] = e.message + (f" (hint: {e.hint})" if e.hint else "")
        return row
    problems = list(report.compat.problems) if report.compat is not None else []
    problems += [
        f"{d.what}: needs {fmt_bytes(d.needed_bytes)} on {d.path}, {fmt_bytes(d.free_bytes)} free"
        for d in report.disk
        if not d.ok
    ]
    verdict = (
        f"compatible ({report.compat.n_tensors} tensors)"
        if report.compat is not None
        else "headers unavailable"
    )
    row.update(
        ok=report.ok,
        download=fmt_bytes(report.download_bytes),
        disk=f"{fmt_bytes(report.needed_bytes)} needed, {fmt_bytes(report.free_bytes)} free",
        detail="; ".join(problems + list(report.notes))
        or f"{verdict}; sft@{sft.sha[:10]} aligned@{aligned.sha[:10]}",
    )
    return row


def print_preflight(run: RunPlan) -> bool:
    """Print the preflight table; True when every pair can run."""
    from rich.table import Table

    from expo_batch.console import err, out

    err.print(
        "preflight: resolving revisions and reading safetensors headers (no weights downloaded)"
    )
    rows = preflight_rows(run)
    table = Table(title="preflight", title_justify="left")
    table.add_column("pair", no_wrap=True)
    for col in ("ok", "download", "disk", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["pair"],
            "[green]yes[/green]" if r["ok"] else "[red]no[/red]",
            r["download"],
            r["disk"],
            r["detail"],
        )
    out.print(table)
    bad = sum(not r["ok"] for r in rows)
    if bad:
        err.print(f"{bad} of {len(rows)} pairs cannot run as planned (see detail)")
    return not bad
