"""The alpha sweep: generate and score every candidate of one pair, resumably.

Per candidate (``CandidateLayout``): ``generations.jsonl`` and ``rewards.jsonl`` are appended one
chunk at a time, so a crash loses at most one chunk; a rerun skips the prompt ids already
recorded and does nothing when a candidate is complete; ``metrics.json`` is written atomically
at the end. The engine is loaded once per pair and its weights switched in place per alpha.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expo_batch.errors import ScoringError
from expo_batch.io import append_jsonl, atomic_write_json, read_jsonl
from expo_batch.layout import CandidateLayout, PairLayout, alpha_label
from expo_batch.metrics import candidate_metrics

if TYPE_CHECKING:
    from expo_batch.generate.base import Backend
    from expo_batch.manifest import SamplingConfig, Settings
    from expo_batch.prompts import PromptSet
    from expo_batch.score import Scorer

Progress = Callable[[int, int], None]


def _recorded_ids(path: Path, prompt_set: PromptSet) -> set[str]:
    rows = read_jsonl(path)
    known = set(prompt_set.ids)
    ids = {str(r["prompt_id"]) for r in rows}
    stale = sorted(ids - known)
    if stale:
        raise ScoringError(
            f"{path} has records for prompt ids that are not in the prompt set (e.g. {stale[0]!r})",
            "the prompt set changed since these records were written; use a new output folder",
        )
    return ids


def generation_chunks(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Fixed chunks of prompt indices, longest prompts first (less padding, OOM shows early).

    The chunks depend only on the prompt set and the batch size, so a resumed run forms exactly
    the batches an uninterrupted run would have.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def generate_candidate(
    backend: Backend,
    alpha: float,
    prompt_set: PromptSet,
    sampling: SamplingConfig,
    stop_ids: list[int],
    layout: CandidateLayout,
    *,
    batch_size: int,
    on_progress: Progress | None = None,
    prompt_ids: list[list[int]] | None = None,
) -> int:
    """Generate the missing answers of one candidate; returns how many were generated now.

    Calls ``backend.set_weights_alpha(alpha)`` only if there is work. ``prompt_ids`` (rendered
    prompts, in prompt-set order) may be passed to avoid re-rendering them for every alpha.
    """
    done = _recorded_ids(layout.generations, prompt_set)
    total = len(prompt_set)
    if len(done) >= total:
        return 0
    if prompt_ids is None:
        from expo_batch.prompts import render_prompt_set

        prompt_ids = render_prompt_set(backend.tokenizer, prompt_set)
    backend.set_weights_alpha(alpha)
    layout.root.mkdir(parents=True, exist_ok=True)
    made = 0
    for chunk in generation_chunks([len(p) for p in prompt_ids], batch_size):
        todo = [i for i in chunk if prompt_set.prompts[i].id not in done]
        if not todo:
            continue
        gens = backend.generate([prompt_ids[i] for i in todo], sampling, stop_ids)
        rows = [
            {
                "prompt_id": prompt_set.prompts[i].id,
                "prompt": prompt_set.prompts[i].text,
                "answer": g.text,
                "n_tokens": g.n_tokens,
                "finish_reason": g.finish_reason,
            }
            for i, g in zip(todo, gens, strict=True)
        ]
        append_jsonl(layout.generations, rows)
        made += len(rows)
        done.update(r["prompt_id"] for r in rows)
        if on_progress is not None:
            on_progress(len(done), total)
    return made


def score_candidate(
    scorer: Scorer,
    prompt_set: PromptSet,
    layout: CandidateLayout,
    *,
    batch_size: int,
    on_progress: Progress | None = None,
) -> int:
    """Score the recorded answers that have no reward yet; returns how many were scored now."""
    gens = read_jsonl(layout.generations)
    scored = _recorded_ids(layout.rewards, prompt_set)
    todo = [g for g in gens if str(g["prompt_id"]) not in scored]
    made = 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        rewards = scorer.score([g["prompt"] for g in chunk], [g["answer"] for g in chunk])
        append_jsonl(
            layout.rewards,
            [
                {"prompt_id": g["prompt_id"], "reward": float(r)}
                for g, r in zip(chunk, rewards, strict=True)
            ],
        )
        made += len(chunk)
        if on_progress is not None:
            on_progress(len(scored) + made, len(gens))
    return made


def candidate_state(layout: CandidateLayout, prompt_set: PromptSet) -> dict[str, int]:
    """How far a candidate got: prompts, generated, scored."""
    return {
        "prompts": len(prompt_set),
        "generated": len({r["prompt_id"] for r in read_jsonl(layout.generations)}),
        "scored": len({r["prompt_id"] for r in read_jsonl(layout.rewards)}),
    }


def finalize_candidate(
    layout: CandidateLayout, alpha: float, prompt_set: PromptSet | None = None
) -> dict:
    """The candidate's metrics from its records, written to metrics.json atomically."""
    metrics: dict[str, Any] = {"alpha": float(alpha), "label": alpha_label(alpha)}
    metrics.update(candidate_metrics(read_jsonl(layout.generations), read_jsonl(layout.rewards)))
    if prompt_set is not None:
        metrics["prompt_set_hash"] = prompt_set.hash
        metrics["complete"] = metrics["n"] == len(prompt_set) and metrics["n_generations"] == len(
            prompt_set
        )
    atomic_write_json(layout.metrics, metrics)
    return metrics


def sweep_alphas(alphas: list[float] | tuple[float, ...]) -> list[float]:
    """The grid with alpha 0 (the aligned model itself, the baseline) always included, sorted."""
    return sorted({0.0, *(float(a) for a in alphas)})


class Engines:
    """The policy engine and the reward model of one pair, each loaded on first use.

    At most one of each is resident; :meth:`release_policy` frees the policy (and its GPU
    memory) before the reward model is loaded when memory is short. Engines passed in ready-made
    are used but never closed here.
    """

    def __init__(
        self,
        sft_dir: str | Path,
        aligned_dir: str | Path,
        settings: Settings,
        *,
        trust_remote_code: bool = False,
        device: str | None = None,
        scorer_model: str | None = None,
        backend: Backend | None = None,
        scorer: Scorer | None = None,
    ):
        self.sft_dir, self.aligned_dir, self.settings = sft_dir, aligned_dir, settings
        self.trust_remote_code, self.device = trust_remote_code, device
        self.scorer_model = scorer_model  # a local folder standing for settings.scorer.model
        self._backend, self._scorer = backend, scorer
        self._owned: list[Any] = []
        self.prompt_ids: list[list[int]] | None = None  # rendered once per policy tokenizer

    def policy(self) -> Backend:
        if self._backend is None:
            from expo_batch.generate import get_backend

            self._backend = get_backend(self.settings.backend)(
                self.sft_dir,
                self.aligned_dir,
                dtype=self.settings.dtype,
                trust_remote_code=self.trust_remote_code,
                device=self.device,
                vocab_policy=self.settings.vocab_policy,
            )
            self._owned.append(self._backend)
        return self._backend

    def reward_model(self) -> Scorer:
        if self._scorer is None:
            from expo_batch.score import load_scorer

            cfg = self.settings.scorer
            if self.scorer_model is not None:
                cfg = cfg.model_copy(update={"model": self.scorer_model})
            self._scorer = load_scorer(cfg, device=self.device)
            self._owned.append(self._scorer)
        return self._scorer

    def release_policy(self) -> None:
        if self._backend is not None and self._backend in self._owned:
            self._owned.remove(self._backend)
            self._backend.close()
            self._backend = None
            _free_memory()

    def close(self) -> None:
        for obj in self._owned:
            obj.close()
        self._owned.clear()
        self._backend = self._scorer = None

    def render(self, prompt_set: PromptSet) -> list[list[int]]:
        if self.prompt_ids is None:
            from expo_batch.prompts import render_prompt_set

            self.prompt_ids = render_prompt_set(self.policy().tokenizer, prompt_set)
        return self.prompt_ids


def sweep_pair(
    sft_dir: str | Path,
    aligned_dir: str | Path,
    alphas: list[float] | tuple[float, ...],
    settings: Settings,
    stop_ids: list[int],
    out_dir: str | Path,
    *,
    prompt_set: PromptSet | None = None,
    scorer: Scorer | None = None,
    backend: Backend | None = None,
    low_memory: bool = False,
    trust_remote_code: bool = False,
    device: str | None = None,
    on_event: Callable[[str, float, int, int], None] | None = None,
) -> list[dict]:
    """Run the sweep for one pair and return the metrics of every candidate (alpha 0 first).

    Args:
        out_dir: the pair folder (``PairLayout``); candidates go to ``alpha-<label>/`` inside.
        stop_ids: the manifest's stop token ids (the model's EOS ids are always added).
        low_memory: generate every candidate first, free the policy, then load the reward model;
            otherwise both stay loaded and each candidate is generated then scored.
        backend, scorer: already-loaded ones to use (not closed here); loaded lazily otherwise,
            and only if some candidate still needs them.
        on_event: ``(stage, alpha, done, total)`` progress callback, stage 'generate' or 'score'.
    """
    from expo_batch.prompts import load_prompts

    pair = PairLayout(Path(out_dir))
    grid = sweep_alphas(alphas)
    if prompt_set is None:
        prompt_set = load_prompts(settings.prompts)
    if len(prompt_set) == 0:
        raise ScoringError("the prompt set is empty")
    layouts = {a: pair.candidate(a) for a in grid}
    engines = Engines(
        sft_dir, aligned_dir, settings, trust_remote_code=trust_remote_code, device=device,
        backend=backend, scorer=scorer,
    )  # fmt: skip

    def generate(alpha: float) -> None:
        lay = layouts[alpha]
        if candidate_state(lay, prompt_set)["generated"] >= len(prompt_set):
            return
        progress = (lambda d, t: on_event("generate", alpha, d, t)) if on_event else None
        generate_candidate(
            engines.policy(), alpha, prompt_set, settings.sampling, list(stop_ids), lay,
            batch_size=settings.batch_size, on_progress=progress, prompt_ids=engines.render(prompt_set),
        )  # fmt: skip

    def score(alpha: float) -> None:
        lay = layouts[alpha]
        st = candidate_state(lay, prompt_set)
        if st["scored"] >= st["generated"]:
            return
        progress = (lambda d, t: on_event("score", alpha, d, t)) if on_event else None
        score_candidate(
            engines.reward_model(),
            prompt_set,
            lay,
            batch_size=settings.scorer.batch_size,
            on_progress=progress,
        )

    try:
        if low_memory:
            for a in grid:
                generate(a)
            engines.release_policy()
            for a in grid:
                score(a)
        else:
            for a in grid:
                generate(a)
                score(a)
        results = [finalize_candidate(layouts[a], a, prompt_set) for a in grid]
    finally:
        engines.close()
    from expo_batch.io import atomic_write_json as _write

    _write(
        pair.sweep,
        {
            "sft": str(sft_dir),
            "aligned": str(aligned_dir),
            "prompt_set": {
                "hash": prompt_set.hash,
                "n": len(prompt_set),
                "source": prompt_set.source,
            },
            "sampling": settings.sampling.model_dump(),
            "scorer": settings.scorer.model_dump(),
            "backend": settings.backend,
            "dtype": settings.dtype,
            "stop_token_ids": list(stop_ids),
            "candidates": results,
        },
    )
    return results


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
