"""Publish a run's selected models to the Hub: one repo per pair whose selection chose an alpha.

The upload itself (one commit, skipped when the repo already holds the same fingerprint, dry run)
is :func:`expo_batch.hub.publish`; this module decides what to publish from the run's artifacts:
which pairs are eligible, the repo name (``spec.publish_name`` or ``<aligned-name>-ExPO``), the
fingerprint, and the commit message (source pair, alpha, fingerprint).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from expo_batch.errors import ExpoError, UsageError
from expo_batch.io import read_json
from expo_batch.layout import RunLayout, alpha_label
from expo_batch.ledger import fingerprint as make_fingerprint
from expo_batch.ledger import open_ledger_readonly

Status = Literal["uploaded", "skipped", "dry-run", "not eligible", "failed"]
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class PublishOutcome:
    pair: str
    status: Status
    repo_id: str | None = None
    alpha: float | None = None
    fingerprint: str | None = None
    detail: str = ""
    """Why not eligible, the error, or the hub's description of what was (or would be) done."""
    result: Any = None
    """The hub's ``PublishResult`` when the upload was attempted."""


def _pairs_of(run: RunLayout) -> list[str]:
    meta = read_json(run.root / "run.json") if (run.root / "run.json").exists() else {}
    names = list(meta.get("pairs") or [])
    for p in sorted((run.root / "pairs").glob("*")):
        if p.is_dir() and p.name not in names:
            names.append(p.name)
    return names


def _filter(run: RunLayout, names: list[str], only: list[str] | None) -> list[str]:
    """Names matching ``--only`` (names, globs, tags, family, algorithm): manifest.select_pairs."""
    if not only:
        return names
    from expo_batch.manifest import select_pairs

    stand_ins = []
    for name in names:
        info = _read(run.pair(name).pair_json) or {}
        spec = info.get("spec") or {}
        # select_pairs reads only .name and .spec.{tags,family,algorithm}
        stand_ins.append(
            SimpleNamespace(
                name=name,
                spec=SimpleNamespace(
                    tags=tuple(spec.get("tags") or ()),
                    family=spec.get("family"),
                    algorithm=spec.get("algorithm"),
                ),
            )
        )
    return [p.name for p in select_pairs(stand_ins, only)]  # type: ignore[arg-type]


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError):
        return None


def publish_fingerprint(run: RunLayout, pair: str, sweep: dict[str, Any], alpha: float) -> str:
    """What identifies the published folder: the ledger's materialize and card fingerprints.

    Falls back to the sweep's fingerprint and the alpha for a run folder without a ledger.
    """
    led = open_ledger_readonly(run.ledger)
    units = {}
    if led is not None:
        try:
            units = {u.unit: u for u in led.units(pair) if u.state == "done"}
        finally:
            led.close()
    if "materialize" in units:
        return make_fingerprint(
            materialize=units["materialize"].fingerprint,
            card=units["card"].fingerprint if "card" in units else None,
        )
    return make_fingerprint(sweep=sweep.get("fingerprint"), alpha=alpha)


def publish_run(
    run_dir: Path,
    *,
    namespace: str,
    only: list[str] | None = None,
    private: bool = False,
    dry_run: bool = False,
) -> list[PublishOutcome]:
    """Publish every eligible pair of a run to ``<namespace>/<repo name>``; one outcome per pair.

    A pair is eligible when its sweep chose an alpha and its model folder exists. Before a real
    upload the card is rewritten with the repo id (so its usage snippet names the repo); a dry run
    writes nothing and makes no network call. A Hub failure of one pair is recorded in its outcome
    and the others still run.

    Raises:
        UsageError: a bad namespace, not a run folder, or ``only`` matches no pair.
    """
    from expo_batch import card, hub

    if not namespace or not _NAMESPACE_RE.match(namespace):
        raise UsageError(
            f"--namespace {namespace!r} is not a Hub user or organization name",
            "give your user name or an organization you can write to, e.g. my-org",
        )
    run = RunLayout(Path(run_dir))
    if not (run.root / "run.json").exists() and not (run.root / "pairs").is_dir():
        raise UsageError(f"{run.root} is not a run folder (no run.json)")
    from expo_batch.report import collect

    states = {r.pair: r for r in collect(run.root)}
    outcomes: list[PublishOutcome] = []
    for name in _filter(run, _pairs_of(run), only):
        layout = run.pair(name)
        info = _read(layout.pair_json) or {}
        sweep = _read(layout.sweep)
        if sweep is None:
            row = states.get(name)
            why = "sweep not finished"
            if row is not None and row.state == "failed":
                why = f"failed at {row.error or row.stage}"
            elif row is not None and row.stage:
                why = f"pending ({row.stage})"
            outcomes.append(PublishOutcome(name, "not eligible", detail=why))
            continue
        alpha = (sweep.get("selection") or {}).get("chosen_alpha")
        if alpha is None:
            reason = (sweep.get("selection") or {}).get("reason") or "no alpha chosen"
            outcomes.append(
                PublishOutcome(name, "not eligible", detail=f"no alpha chosen: {reason}")
            )
            continue
        if not layout.model.is_dir():
            outcomes.append(
                PublishOutcome(
                    name,
                    "not eligible",
                    alpha=alpha,
                    detail="model folder missing (materialize not done)",
                )
            )
            continue
        repo_id = f"{namespace}/{card.default_repo_name(info)}"
        fp = publish_fingerprint(run, name, sweep, float(alpha))
        aligned = card.hub_id(info.get("aligned")) or (info.get("aligned") or {}).get("ref", "?")
        message = f"ExPO of {aligned} (pair {name}, alpha {alpha_label(alpha)}), fingerprint {fp}"
        try:
            if not dry_run:
                card.write_card(layout.model, layout.root, repo_id=repo_id)
            result = hub.publish(
                layout.model,
                repo_id,
                private=private,
                fingerprint=fp,
                commit_message=message,
                dry_run=dry_run,
            )
        except ExpoError as e:
            outcomes.append(
                PublishOutcome(
                    name,
                    "failed",
                    repo_id,
                    alpha,
                    fp,
                    detail=e.message + (f" ({e.hint})" if e.hint else ""),
                )
            )
            continue
        outcomes.append(
            PublishOutcome(
                name, result.action, repo_id, alpha, fp, detail=result.describe(), result=result
            )
        )
    return outcomes


def summary(outcomes: list[PublishOutcome]) -> str:
    """One line: counts per status, with the pairs that were not eligible or failed."""
    order = ("uploaded", "dry-run", "skipped", "not eligible", "failed")
    parts = []
    for status in order:
        hit = [o.pair for o in outcomes if o.status == status]
        if not hit:
            continue
        label = {"dry-run": "would upload"}.get(status, status)
        names = f" ({', '.join(hit)})" if status in ("not eligible", "failed", "skipped") else ""
        parts.append(f"{len(hit)} {label}{names}")
    return ", ".join(parts) if parts else "no pairs"
