"""The batch run: the one place that knows the order of the steps.

For each selected pair:

    resolve -> fetch -> preflight -> sweep (alpha 0 + grid [+ refine]) -> select -> materialize -> card

Every step is a ledger unit keyed by a fingerprint of its inputs: a unit recorded as done with the
same fingerprint (and whose artifact is still there) is skipped, so a killed run resumes where it
stopped and a changed input redoes exactly what depends on it. A failing pair is recorded with
its error and the run moves on. One policy model and one reward model at most are resident at a
time: all pending candidates are generated with one engine whose weights change in place, then
the engine is released and the reward model scores them.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from expo_batch import __version__
from expo_batch.errors import ExpoError
from expo_batch.io import atomic_write_json, read_json
from expo_batch.layout import PairLayout, alpha_label
from expo_batch.ledger import Ledger, fingerprint
from expo_batch.plan import PairPlan, RunPlan
from expo_batch.progress import RunProgress
from expo_batch.refs import ModelRef

log = logging.getLogger("expo_batch.run")


@dataclass
class PairOutcome:
    name: str
    state: str  # done | skipped (nothing left to do) | failed
    chosen_alpha: float | None = None
    gain: float | None = None
    error: str | None = None
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    run_dir: Path
    outcomes: list[PairOutcome]

    @property
    def failed(self) -> list[PairOutcome]:
        return [o for o in self.outcomes if o.state == "failed"]

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


# ---------------------------------------------------------------------------------- the run


def run(plan: RunPlan, *, fresh: bool = False, progress: RunProgress | None = None) -> RunSummary:
    """Run every pair of ``plan``; return the summary (failed pairs do not stop the run)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would break our own progress
    layout = plan.layout
    layout.root.mkdir(parents=True, exist_ok=True)
    progress = progress or RunProgress(enabled=False)
    handler = _attach_log(layout.log)
    outcomes: list[PairOutcome] = []
    try:
        with Ledger(layout.ledger) as ledger:
            if fresh:
                for pp in plan.pairs:
                    _forget_pair(ledger, layout.pair(pp.name), pp.name)
            _write_run_json(plan, finished=False)
            log.info("run %s: %d pairs", layout.root, len(plan.pairs))
            try:
                with progress:
                    progress.start_run(len(plan.pairs))
                    for pp in plan.pairs:
                        outcomes.append(_run_pair(plan, pp, ledger, progress))
                        progress.pair_done()
                _write_run_json(plan, finished=True)
            finally:
                _write_results(layout.root)  # an interrupted run gets its (partial) tables too
    finally:
        logging.getLogger("expo_batch").removeHandler(handler)
        handler.close()
    return RunSummary(layout.root, outcomes)


def _run_pair(plan: RunPlan, pp: PairPlan, ledger: Ledger, progress: RunProgress) -> PairOutcome:
    steps = PairSteps(plan, pp, ledger, progress)
    progress.start_pair(pp.name)
    log.info("pair %s: start", pp.name)
    try:
        steps.resolve()
        steps.check()
        steps.fetch()
        steps.preflight()
        steps.sweep()
        selection = steps.select()
        if selection["chosen_alpha"] is not None:
            steps.materialize(selection)
        else:
            steps.drop_model()
        steps.card(selection)
    except ExpoError as e:
        return steps.fail(e.message + (f" (hint: {e.hint})" if e.hint else ""))
    except (KeyboardInterrupt, SystemExit):
        log.warning("pair %s: interrupted during %s", pp.name, steps.current)
        steps.close_models()
        raise
    except Exception as e:  # an unexpected failure of one pair must not end the batch
        log.error("pair %s: internal error\n%s", pp.name, traceback.format_exc())
        return steps.fail(f"internal error: {type(e).__name__}: {e} (traceback in run.log)")
    finally:
        steps.close_models()
    log.info("pair %s: done, chosen alpha %s", pp.name, selection["chosen_alpha"])
    return PairOutcome(
        pp.name,
        "done" if steps.computed else "skipped",  # skipped: everything was already done
        chosen_alpha=selection["chosen_alpha"],
        gain=selection.get("gain"),
        computed=steps.computed,
        skipped=steps.skipped,
    )


class PairSteps:
    """The steps of one pair, each a ledger unit. Called in order by :func:`_run_pair`."""

    def __init__(self, plan: RunPlan, pp: PairPlan, ledger: Ledger, progress: RunProgress):
        self.plan, self.pp, self.pair, self.ledger, self.progress = (
            plan,
            pp,
            pp.pair,
            ledger,
            progress,
        )
        self.name = pp.name
        self.settings = pp.pair.settings
        self.out: PairLayout = plan.layout.pair(pp.name)
        self.computed: list[str] = []
        self.skipped: list[str] = []
        self.current = "start"
        self.engines: Any = None  # sweep.Engines, made once the checkpoints are on disk
        self.fps: dict[str, str] = {}

    # ----------------------------------------------------------------------- unit bookkeeping

    def unit(
        self,
        unit: str,
        fp: str,
        fn: Callable[[], dict[str, Any] | None],
        artifact: Path | None = None,
    ) -> dict[str, Any]:
        """Run ``fn`` as ledger unit ``unit`` unless it is done with this fingerprint."""
        self.current = unit
        self.fps[unit] = fp
        if self.ledger.is_done(self.name, unit, fp):
            self.ledger.skipped(self.name, unit, fp)
            self.skipped.append(unit)
            rec = self.ledger.get(self.name, unit)
            return rec.info if rec else {}
        self.progress.stage(unit)
        self.ledger.start(self.name, unit, fp)
        info = fn() or {}
        self.ledger.done(self.name, unit, fp, artifact=artifact, info=info)
        self.computed.append(unit)
        return info

    def fail(self, message: str) -> PairOutcome:
        log.error("pair %s: failed during %s: %s", self.name, self.current, message)
        self.ledger.failed(self.name, self.current, self.fps.get(self.current, "-"), message)
        return PairOutcome(
            self.name, "failed", error=message, computed=self.computed, skipped=self.skipped
        )

    def where(self, field_name: str) -> str:
        return self.plan.manifest.location(self.pair, field_name)

    # ------------------------------------------------------------------------------- resolve

    def resolve(self) -> None:
        """Pin sft, aligned and the reward model. A resumed run keeps the SHAs it pinned."""
        from expo_batch.hub import resolve

        prev = self.ledger.get(self.name, "resolve")
        pinned = prev.info if prev and prev.state == "done" else {}
        refs = {"sft": self.pair.sft, "aligned": self.pair.aligned}
        scorer_ref = self._scorer_ref()
        if scorer_ref is not None:
            refs["scorer"] = scorer_ref
        self.current = "resolve"
        resolved = {}
        for key, ref in refs.items():
            old = pinned.get(key) or {}
            if not ref.is_local and old.get("ref") == ref.text and old.get("sha"):
                ref = ModelRef(text=ref.text, repo_id=ref.repo_id, revision=old["sha"])
            resolved[key] = resolve(
                ref, where=self.where(key if key != "scorer" else "scorer.model")
            )
        self.resolved = resolved
        self.prompt_set = self._load_prompts()
        info = {k: r.to_dict() for k, r in resolved.items()}
        info["prompts"] = {"hash": self.prompt_set.hash, "n": len(self.prompt_set)}
        fp = fingerprint(**{k: r.sha for k, r in resolved.items()}, prompts=self.prompt_set.hash)
        self.unit("resolve", fp, lambda: info, artifact=None)
        self.sha = {k: r.sha for k, r in resolved.items()}
        atomic_write_json(self.out.pair_json, self._pair_json())

    def _scorer_ref(self) -> ModelRef | None:
        from expo_batch.refs import parse_ref

        model = self.settings.scorer.model
        return None if model is None else parse_ref(model)

    def _load_prompts(self):
        from expo_batch.prompts import load_prompts

        return load_prompts(self.settings.prompts, where=self.where("prompts"))

    def _pair_json(self) -> dict[str, Any]:
        import torch
        import transformers

        s = self.settings
        return {
            "name": self.name,
            "spec": self.pair.spec.model_dump(mode="json", exclude_none=True),
            "settings": s.model_dump(mode="json"),
            "sft": _ref_json(self.resolved["sft"]),
            "aligned": _ref_json(self.resolved["aligned"]),
            "scorer": (
                _ref_json(self.resolved["scorer"])
                if "scorer" in self.resolved
                else {"ref": s.scorer.function, "sha": None, "local": True}
            ),
            "prompts": {
                "source": self.prompt_set.source,
                "hash": self.prompt_set.hash,
                "n": len(self.prompt_set),
            },
            "versions": {
                "expo_batch": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            "manifest_entry": _manifest_entry(self.plan.manifest.path, self.pair.line),
        }

    # --------------------------------------------------------------------------------- check

    def check(self) -> None:
        """Before any download: tensor names, shapes and dtypes from the safetensors headers
        (read remotely for Hub refs), download size and disk space."""
        fp = fingerprint(
            sft=self.sha["sft"], aligned=self.sha["aligned"], vocab=self.settings.vocab_policy
        )

        def body() -> dict[str, Any]:
            from expo_batch.hub import preflight

            report = preflight(
                self.resolved["sft"],
                self.resolved["aligned"],
                output_dir=self.out.root,
                vocab_policy=self.settings.vocab_policy,
                trust_remote_code=self.pair.spec.trust_remote_code,
            )
            report.require_ok()
            return report.to_dict()

        self.unit("check", fp, body)

    # --------------------------------------------------------------------------------- fetch

    def fetch(self) -> None:
        """Download (or find in the Hub cache) both checkpoints and the reward model."""
        from expo_batch.hub import fetch

        self.paths: dict[str, Path] = {}
        for key, r in self.resolved.items():
            trust = (
                self.pair.spec.trust_remote_code
                if key != "scorer"
                else self.settings.scorer.trust_remote_code
            )
            fp = fingerprint(sha=r.sha, trust_remote_code=trust)
            unit = f"fetch:{key}"
            info = self.unit(
                unit, fp, lambda r=r, trust=trust: {"path": str(fetch(r, trust_remote_code=trust))}
            )
            self.paths[key] = Path(info["path"])
            if not self.paths[key].exists():  # the cache was cleaned since: fetch again
                self.paths[key] = Path(fetch(r, trust_remote_code=trust))

    # ----------------------------------------------------------------------------- preflight

    def preflight(self) -> None:
        """Shapes and dtypes compatible, disk space, and the delta diagnostics."""
        fp = fingerprint(
            sft=self.sha["sft"], aligned=self.sha["aligned"], vocab=self.settings.vocab_policy
        )

        def body() -> dict[str, Any]:
            from expo_batch.checkpoint import Checkpoint
            from expo_batch.compat import check_compatible
            from expo_batch.diagnostics import delta_diagnostics

            sft, aligned = (
                Checkpoint.open(self.paths["sft"]),
                Checkpoint.open(self.paths["aligned"]),
            )
            compat = check_compatible(
                sft.specs, aligned.specs, vocab_policy=self.settings.vocab_policy
            )
            compat.raise_for_problems(f"pair {self.name!r}")
            diag = delta_diagnostics(sft, aligned)
            for w in diag.warnings:
                log.warning("pair %s: %s", self.name, w)
                from expo_batch.console import warn

                warn(f"{self.name}: {w}")
            report = {
                "compat": {
                    "n_tensors": compat.n_tensors,
                    "vocab_mismatches": [vars(v) for v in compat.vocab_mismatches],
                },
                "sizes": {"sft_bytes": sft.total_bytes, "aligned_bytes": aligned.total_bytes},
                "remote": (self.ledger.get(self.name, "check") or _NO_UNIT).info,
                "diagnostics": diag.to_dict(),
            }
            atomic_write_json(self.out.preflight, report)
            return {"warnings": list(diag.warnings)}

        self.unit("preflight", fp, body, artifact=self.out.preflight)

    # --------------------------------------------------------------------------------- sweep

    def _weights_key(self, alpha: float) -> dict[str, Any]:
        """What determines the weights of a candidate: the pair, alpha, dtype, vocab policy."""
        s = self.settings
        return {
            "sft": self.sha["sft"],
            "aligned": self.sha["aligned"],
            "alpha": alpha_label(alpha),
            "dtype": s.dtype,
            "vocab": s.vocab_policy,
        }

    def _gen_fp(self, alpha: float) -> str:
        s = self.settings
        return fingerprint(
            **self._weights_key(alpha),
            prompts=self.prompt_set.hash,
            sampling=s.sampling.model_dump(),
            stops=list(self.pair.spec.stop_token_ids),
            backend=s.backend,
            # batch composition changes the transformers backend's samples, not vLLM's
            batch_size=s.batch_size if s.backend == "transformers" else None,
        )

    def _score_fp(self, alpha: float) -> str:
        sc = self.settings.scorer
        return fingerprint(
            generations=self._gen_fp(alpha),
            scorer=self.sha.get("scorer") or sc.function,
            batch_size=sc.batch_size,
            dtype=sc.dtype,
        )

    def sweep(self) -> None:
        """Alpha 0 plus the grid, then (strategy refine) finer steps around the best."""
        from expo_batch.select import refine_alphas

        alphas = list(self.pp.candidates)
        self._evaluate(alphas)
        search = self.settings.search
        if search.strategy == "refine":
            step = search.refine_step
            for _ in range(search.refine_rounds):
                sel = self._selection(alphas)
                best = sel.get("best_alpha")
                if best is None:
                    break
                extra = refine_alphas(alphas, best, step)
                if not extra:
                    break
                alphas += extra
                self._evaluate(extra)
                step /= 2
        self.alphas = sorted(alphas)

    def _evaluate(self, alphas: list[float]) -> None:
        """Generate every pending candidate with one engine, then score them with one RM."""
        from expo_batch.sweep import finalize_candidate, generate_candidate, score_candidate

        s = self.settings
        stops = list(self.pair.spec.stop_token_ids)
        for alpha in alphas:
            self._discard_stale(alpha)
        for alpha in alphas:
            layout = self.out.candidate(alpha)

            def gen(alpha=alpha, layout=layout) -> dict[str, Any]:
                backend = self._engines().policy()
                task = self.progress.candidate(
                    f"generate α={alpha_label(alpha)}", len(self.prompt_set)
                )
                n = generate_candidate(
                    backend,
                    alpha,
                    self.prompt_set,
                    s.sampling,
                    stops,
                    layout,
                    batch_size=s.batch_size,
                    prompt_ids=self._engines().render(self.prompt_set),
                    on_progress=lambda done, total, unit=f"generate@{alpha_label(alpha)}": (
                        self.progress.update(task, done),
                        self.ledger.progress(self.name, unit, self.fps[unit], f"{done}/{total}"),
                    ),
                )
                return {"n": n}

            self.unit(
                f"generate@{alpha_label(alpha)}",
                self._gen_fp(alpha),
                gen,
                artifact=layout.generations,
            )
        if self.engines is not None:
            self.engines.release_policy()
        for alpha in alphas:
            layout = self.out.candidate(alpha)

            def score(alpha=alpha, layout=layout) -> dict[str, Any]:
                scorer = self._engines().reward_model()
                task = self.progress.candidate(
                    f"score α={alpha_label(alpha)}", len(self.prompt_set)
                )
                score_candidate(
                    scorer,
                    self.prompt_set,
                    layout,
                    batch_size=s.scorer.batch_size,
                    on_progress=lambda done, total, unit=f"score@{alpha_label(alpha)}": (
                        self.progress.update(task, done),
                        self.ledger.progress(self.name, unit, self.fps[unit], f"{done}/{total}"),
                    ),
                )
                return finalize_candidate(layout, alpha, self.prompt_set)

            self.unit(
                f"score@{alpha_label(alpha)}", self._score_fp(alpha), score, artifact=layout.metrics
            )
        self.close_models()

    def _discard_stale(self, alpha: float) -> None:
        """Records of a candidate made with other inputs are removed before it is redone."""
        layout = self.out.candidate(alpha)
        label = alpha_label(alpha)
        gen = self.ledger.get(self.name, f"generate@{label}")
        if gen is None or gen.fingerprint != self._gen_fp(alpha):
            if layout.root.exists():
                shutil.rmtree(layout.root)
            return
        sc = self.ledger.get(self.name, f"score@{label}")
        if sc is None or sc.fingerprint != self._score_fp(alpha):
            for p in (layout.rewards, layout.metrics):
                p.unlink(missing_ok=True)

    def _engines(self):
        if self.engines is None:
            from expo_batch.sweep import Engines

            self.engines = Engines(
                self.paths["sft"],
                self.paths["aligned"],
                self.settings,
                trust_remote_code=self.pair.spec.trust_remote_code,
                scorer_model=str(self.paths["scorer"]) if "scorer" in self.paths else None,
            )
        return self.engines

    def close_models(self) -> None:
        if self.engines is not None:
            self.engines.close()
            self.engines = None

    # -------------------------------------------------------------------------------- select

    def _selection(self, alphas: list[float]) -> dict[str, Any]:
        from expo_batch.io import read_jsonl
        from expo_batch.select import select_alpha

        rewards: dict[float, dict[str, float]] = {}
        metrics: dict[float, dict[str, Any]] = {}
        for a in alphas:
            c = self.out.candidate(a)
            rewards[a] = {r["prompt_id"]: float(r["reward"]) for r in read_jsonl(c.rewards)}
            metrics[a] = read_json(c.metrics)
        return select_alpha(
            rewards, metrics, self.settings.selection, strategy=self.settings.search.strategy
        )

    def select(self) -> dict[str, Any]:
        """The paper's rule (plus the guards); writes sweep.json. Candidate metrics are derived
        again here, so a change in their definitions never costs a new scoring pass."""
        from expo_batch.metrics import METRICS_VERSION

        fp = fingerprint(
            scores=[self._score_fp(a) for a in self.alphas],
            metrics=METRICS_VERSION,
            selection=self.settings.selection.model_dump(),
            strategy=self.settings.search.strategy,
        )
        self.fps["select"] = fp

        def body() -> dict[str, Any]:
            from expo_batch.sweep import finalize_candidate

            for a in self.alphas:
                finalize_candidate(self.out.candidate(a), a, self.prompt_set)
            selection = self._selection(self.alphas)
            sweep = {
                "pair": self.name,
                "fingerprint": fp,
                "candidates": [read_json(self.out.candidate(a).metrics) for a in self.alphas],
                "selection": selection,
            }
            atomic_write_json(self.out.sweep, sweep)
            return {"chosen_alpha": selection["chosen_alpha"], "gain": selection.get("gain")}

        self.unit("select", fp, body, artifact=self.out.sweep)
        return read_json(self.out.sweep)["selection"]

    # --------------------------------------------------------------------------- materialize

    def _materialize_fp(self, alpha: float) -> str:
        return fingerprint(**self._weights_key(alpha), version=__version__)

    def materialize(self, selection: dict[str, Any]) -> None:
        """Stream the chosen alpha into a full checkpoint folder (written atomically)."""
        alpha = selection["chosen_alpha"]
        fp = self._materialize_fp(alpha)

        def body() -> dict[str, Any]:
            from expo_batch.extrapolate import extrapolate_checkpoint

            s = self.settings
            extrapolate_checkpoint(
                self.paths["sft"],
                self.paths["aligned"],
                alpha,
                self.out.model,
                dtype=None if s.dtype == "auto" else s.dtype,
                vocab_policy=s.vocab_policy,
                trust_remote_code=self.pair.spec.trust_remote_code,
                provenance={
                    "pair": self.name,
                    "sft": self.resolved["sft"].to_dict(),
                    "aligned": self.resolved["aligned"].to_dict(),
                    "fingerprint": fp,
                    "selection_fingerprint": self.fps["select"],
                },
                progress=False,
            )
            return {"alpha": alpha}

        self.unit("materialize", fp, body, artifact=self.out.model / "config.json")

    def drop_model(self) -> None:
        """No alpha was chosen: a model folder left from an earlier selection is not current."""
        if self.out.model.exists():
            shutil.rmtree(self.out.model)

    # ---------------------------------------------------------------------------------- card

    def card(self, selection: dict[str, Any]) -> None:
        """Plot, model card (when a model was written) and the judge exports."""
        chosen = selection["chosen_alpha"]
        fp = fingerprint(
            select=self.fps["select"],
            materialize=self._materialize_fp(chosen) if chosen is not None else None,
            version=__version__,
        )

        def body() -> dict[str, Any]:
            from expo_batch.card import write_card
            from expo_batch.export import write_exports
            from expo_batch.plots import plot_sweep

            paper = self.pair.spec.paper
            plot_sweep(
                read_json(self.out.sweep),
                self.out.sweep_plot,
                paper_alpha=paper.optimal_alpha if paper else None,
            )
            write_exports(self.out.root)
            if chosen is not None:
                write_card(self.out.model, self.out.root)
            return {}

        self.unit("card", fp, body, artifact=self.out.sweep_plot)


# ---------------------------------------------------------------------------------- helpers


class _NoUnit:
    info: dict[str, Any] = {}


_NO_UNIT = _NoUnit()


def _ref_json(r) -> dict[str, Any]:
    return {"ref": r.ref.text, "sha": r.sha, "local": r.is_local, "repo_id": r.ref.repo_id}


def _manifest_entry(path: Path, line: int | None) -> str:
    """The pair's YAML block as written in the manifest (for cards: how to reproduce)."""
    if not line:
        return ""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    start = line - 1
    indent = len(lines[start]) - len(lines[start].lstrip(" -"))
    block = [lines[start]]
    for text in lines[start + 1 :]:
        stripped = text.strip()
        if stripped.startswith("- ") and len(text) - len(text.lstrip()) < indent:
            break
        if stripped and len(text) - len(text.lstrip()) < indent:
            break
        block.append(text)
    while block and not block[-1].strip():
        block.pop()
    return "\n".join(block)


def _write_run_json(plan: RunPlan, *, finished: bool) -> None:
    """run.json: the manifest, the pairs ever run in this folder, start and finish times."""
    layout = plan.layout
    path = layout.root / "run.json"
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    old = read_json(path) if path.exists() else {}
    atomic_write_json(
        path,
        {
            "manifest": str(plan.manifest.path),
            "name": layout.root.name,
            "tool_version": __version__,
            "pairs": list(dict.fromkeys([*old.get("pairs", []), *(pp.name for pp in plan.pairs)])),
            "started": old.get("started", now) if finished else now,
            "finished": now if finished else None,
        },
    )
    if not finished:
        shutil.copyfile(plan.manifest.path, layout.manifest_copy)


def _forget_pair(ledger: Ledger, out: PairLayout, name: str) -> None:
    ledger.forget(name)
    if out.root.exists():
        shutil.rmtree(out.root)


def _write_results(run_dir: Path) -> None:
    from expo_batch.report import write_results

    write_results(run_dir)


def _attach_log(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("expo_batch")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


# ------------------------------------------------------------------------------- dry run


def dry_run_rows(plan: RunPlan) -> list[tuple[str, str, str]]:
    """(pair, unit, state) for the plan, from what the ledger says is done (no fingerprints
    are computed: that needs the resolved revisions; 'done' means done at the last run)."""
    rows: list[tuple[str, str, str]] = []
    ledger = Ledger(plan.layout.ledger) if plan.layout.ledger.exists() else None
    try:
        for pp in plan.pairs:
            recorded = {u.unit: u for u in ledger.units(pp.name)} if ledger else {}
            units = ["resolve", "check", "fetch:sft", "fetch:aligned", "preflight"]
            units += [f"generate@{alpha_label(a)}" for a in pp.candidates]
            units += [f"score@{alpha_label(a)}" for a in pp.candidates]
            units += ["select", "materialize", "card"]
            for u in units:
                rec = recorded.get(u)
                rows.append((pp.name, u, rec.state if rec else "pending"))
    finally:
        if ledger:
            ledger.close()
    return rows
