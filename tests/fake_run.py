"""Write a realistic run folder without running models: for tests of the results layer.

The folder follows the artifact contract (run.json, manifest.yaml, pair.json, metrics.json,
generations.jsonl, rewards.jsonl, sweep.json, model/) and records its units through the real
:class:`~expo_batch.ledger.Ledger`. Every number is derived from the per-prompt rows it writes, so
a test can recompute what a report should show.

Four pairs, one per state a report must handle:

- ``zephyr-beta``: complete. Grid 0.1..0.5, alpha 0.5 rejected by the truncation guard, a chosen
  alpha, a materialized ``model/`` folder, card unit done. Paper values in ``spec.paper``.
- ``tulu2-7b``: selection chose none (every alpha, including a negative one, loses reward).
- ``broken``: failed at preflight (shape mismatch error in the ledger).
- ``pending``: the baseline is generated and scored, the sweep is still running (no sweep.json).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expo_batch import __version__
from expo_batch.io import append_jsonl, atomic_write_json, atomic_write_text
from expo_batch.layout import RunLayout, alpha_label
from expo_batch.ledger import Ledger, fingerprint
from expo_batch.manifest import PairSpec, Settings

SHA_A = "1" * 40
SHA_B = "2" * 40
SHA_RM = "3" * 40
SHA_DS = "4" * 40

MANIFEST = """\
defaults:
  alphas: [0.1, 0.2, 0.3, 0.4, 0.5]
  prompts: {dataset: HuggingFaceH4/ultrafeedback_binarized, split: test_gen, limit: 24}
  sampling: {max_tokens: 512}
  selection: {max_truncation_increase: 0.1}
pairs:
  - name: zephyr-beta
    sft: HuggingFaceH4/mistral-7b-sft-beta
    aligned: HuggingFaceH4/zephyr-7b-beta
    algorithm: offline DPO
    family: zephyr
    size: 7B
    tags: [table5]
    paper: {optimal_alpha: 0.1, reward: 5.31, expo_reward: 5.40,
            table5: {wr: 10.2, lc_wr: 13.2, expo_wr: 11.1, expo_lc_wr: 14.0}}
  - name: tulu2-7b
    sft: allenai/tulu-2-7b
    aligned: allenai/tulu-2-dpo-7b
    algorithm: offline DPO
    family: tulu-2
    size: 7B
    alphas: [-0.1, 0.1, 0.2]
    paper: {optimal_alpha: 0.5}
  - name: broken
    sft: org/broken-sft
    aligned: org/broken-dpo
    algorithm: DPO
  - name: pending
    sft: org/pending-sft
    aligned: org/pending-dpo
    algorithm: SimPO
    family: llama-3
    size: 8B
"""


def _entry(name: str) -> str:
    """The pair's YAML text as written in MANIFEST (what pair.json's manifest_entry carries)."""
    lines = MANIFEST.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == f"- name: {name}")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].startswith("  - name:")), len(lines)
    )
    return "\n".join(ln[4:] for ln in lines[start:end]) + "\n"


@dataclass
class FakePair:
    name: str
    state: str  # done | failed | pending
    alphas: list[float] = field(default_factory=list)
    rewards: dict[float, list[float]] = field(default_factory=dict)
    lengths: dict[float, list[int]] = field(default_factory=dict)
    sweep: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class FakeRun:
    root: Path
    pairs: dict[str, FakePair]

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.root)


def _metrics(alpha: float, rewards: list[float], lengths: list[int], max_tokens: int) -> dict:
    n = len(rewards)
    return {
        "alpha": alpha,
        "n": n,
        "mean_reward": statistics.fmean(rewards),
        "stderr": statistics.stdev(rewards) / n**0.5,
        "mean_length": statistics.fmean(lengths),
        "truncation_rate": sum(x >= max_tokens for x in lengths) / n,
        "degenerate_rate": 0.0,
    }


def _bootstrap_ci(diffs: list[float], seed: int, samples: int = 400) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(statistics.fmean(rng.choices(diffs, k=n)) for _ in range(samples))
    return means[int(0.025 * samples)], means[int(0.975 * samples) - 1]


def _write_candidate(
    run: RunLayout,
    led: Ledger,
    pair: FakePair,
    alpha: float,
    rewards: list[float],
    lengths: list[int],
    max_tokens: int,
    prompts: list[str],
    *,
    finished: bool = True,
) -> dict:
    cand = run.pair(pair.name).candidate(alpha)
    label = alpha_label(alpha)
    gen_rows = [
        {
            "prompt_id": i,
            "prompt": prompts[i],
            "answer": f"Answer {i} of {pair.name} at alpha {label}: " + "word " * (lengths[i] // 8),
            "n_tokens": lengths[i],
            "finish_reason": "length" if lengths[i] >= max_tokens else "stop",
        }
        for i in range(len(rewards))
    ]
    fp = fingerprint(pair=pair.name, alpha=alpha)
    led.start(pair.name, f"generate@{label}", fp)
    append_jsonl(cand.generations, gen_rows)
    if not finished:  # a half-written candidate: some generations, nothing scored
        return {}
    led.done(pair.name, f"generate@{label}", fp, artifact=cand.generations)
    led.start(pair.name, f"score@{label}", fp)
    append_jsonl(cand.rewards, [{"prompt_id": i, "reward": r} for i, r in enumerate(rewards)])
    metrics = _metrics(alpha, rewards, lengths, max_tokens)
    atomic_write_json(cand.metrics, metrics)
    led.done(pair.name, f"score@{label}", fp, artifact=cand.metrics, info=metrics)
    pair.rewards[alpha] = rewards
    pair.lengths[alpha] = lengths
    return metrics


def _pair_json(
    run: RunLayout, name: str, spec: PairSpec, settings: Settings, n: int, aligned_dir: Path | None
) -> None:
    local = aligned_dir is not None
    atomic_write_json(
        run.pair(name).pair_json,
        {
            "name": name,
            "spec": spec.model_dump(mode="json"),
            "settings": settings.model_dump(mode="json"),
            "sft": {"ref": f"{spec.sft}@{SHA_A}", "sha": SHA_A, "local": False},
            "aligned": {
                "ref": str(aligned_dir) if local else f"{spec.aligned}@{SHA_B}",
                "sha": "c0ffee" * 4 if local else SHA_B,
                "local": local,
            },
            "scorer": {"ref": settings.scorer.model, "sha": SHA_RM},
            "prompts": {
                "source": {
                    "dataset": settings.prompts.dataset,
                    "split": settings.prompts.split,
                    "revision": SHA_DS,
                },
                "hash": "9f86d081884c7d65",
                "n": n,
            },
            "versions": {"expo_batch": __version__, "torch": "2.13.0", "transformers": "5.19.0"},
            "manifest_entry": _entry(name),
        },
    )


def make_run(
    root: Path,
    *,
    name: str = "demo",
    n: int = 24,
    seed: int = 0,
    aligned_dir: Path | None = None,
    finished: bool = False,
) -> FakeRun:
    """Write the four-pair run under ``root`` (the run folder itself) and return what was written.

    Args:
        aligned_dir: if given, the complete pair's aligned model is this local folder (so a card
            can inherit the license from its README.md) instead of a Hub id.
        finished: write run.json's ``finished`` time (the pending pair stays pending regardless).
    """
    from expo_batch.manifest import parse_manifest

    root = Path(root)
    run = RunLayout(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "registry.yaml"
    atomic_write_text(run.manifest_copy, MANIFEST)
    manifest = parse_manifest(MANIFEST, manifest_path)
    names = [p.name for p in manifest.pairs]
    atomic_write_json(
        run.root / "run.json",
        {
            "manifest": str(manifest_path),
            "name": name,
            "tool_version": __version__,
            "pairs": names,
            "started": "2025-01-01T10:00:00+00:00",
            "finished": "2025-01-01T12:00:00+00:00" if finished else None,
        },
    )
    rng = random.Random(seed)
    prompts = [f"Question {i}: explain topic number {i} in a few sentences." for i in range(n)]
    fake: dict[str, FakePair] = {}
    led = Ledger(run.ledger)
    try:
        for p in manifest.pairs:
            settings, spec = p.settings, p.spec
            max_tokens = settings.sampling.max_tokens
            pair = FakePair(p.name, "done", alphas=[0.0, *settings.alphas])
            fake[p.name] = pair
            _pair_json(
                run, p.name, spec, settings, n, aligned_dir if p.name == "zephyr-beta" else None
            )
            for unit in ("resolve", "fetch"):
                led.start(p.name, unit, "fp-" + unit)
                led.done(p.name, unit, "fp-" + unit)
            if p.name == "broken":
                pair.state = "failed"
                pair.error = (
                    "CheckpointError: tensor model.layers.0.mlp.up_proj.weight has shape "
                    "[11008, 4096] in the SFT model and [14336, 4096] in the aligned model"
                )
                led.start(p.name, "preflight", "fp-pre")
                led.failed(p.name, "preflight", "fp-pre", pair.error)
                continue
            led.start(p.name, "preflight", "fp-pre")
            atomic_write_json(
                run.pair(p.name).preflight,
                {
                    "compat": {"ok": True},
                    "sizes": {},
                    "diagnostics": {"totals": {}, "warnings": []},
                },
            )
            led.done(p.name, "preflight", "fp-pre", artifact=run.pair(p.name).preflight)

            base = [rng.gauss(1.0, 1.0) for _ in range(n)]
            base_len = [min(max_tokens, int(rng.gauss(150, 40))) for _ in range(n)]

            def effect(a: float, name: str = p.name) -> float:
                # zephyr gains up to alpha 0.4 then loses; tulu2 loses everywhere.
                return 1.5 * a - 2.0 * a * a if name == "zephyr-beta" else -abs(a) * 1.5

            cands = [_write_candidate(run, led, pair, 0.0, base, base_len, max_tokens, prompts)]
            if p.name == "pending":
                pair.state = "pending"
                # The first grid alpha is half generated when the run stopped.
                half = n // 2
                _write_candidate(
                    run,
                    led,
                    pair,
                    settings.alphas[0],
                    base[:half],
                    base_len[:half],
                    max_tokens,
                    prompts,
                    finished=False,
                )
                continue
            for a in settings.alphas:
                rewards = [r + effect(a) + rng.gauss(0, 0.2) for r in base]
                # Higher alpha, longer answers; at 0.5 many hit max_tokens (truncation guard).
                lengths = [
                    min(max_tokens, int(ell * (1 + a) + (rng.random() < 0.4) * 400 * (a >= 0.5)))
                    for ell in base_len
                ]
                cands.append(
                    _write_candidate(run, led, pair, a, rewards, lengths, max_tokens, prompts)
                )

            guard = settings.selection.max_truncation_increase
            rejected = [
                {
                    "alpha": c["alpha"],
                    "reason": "truncation rate "
                    f"+{c['truncation_rate'] - cands[0]['truncation_rate']:.2f} over baseline",
                }
                for c in cands[1:]
                if guard is not None and c["truncation_rate"] - cands[0]["truncation_rate"] > guard
            ]
            ok = [c for c in cands[1:] if c["alpha"] not in {r["alpha"] for r in rejected}]
            best = max(ok, key=lambda c: c["mean_reward"])
            bmean = cands[0]["mean_reward"]
            chosen = best if best["mean_reward"] > bmean else None
            if chosen is not None:
                diffs = [x - y for x, y in zip(pair.rewards[chosen["alpha"]], base, strict=True)]
                lo, hi = _bootstrap_ci(diffs, seed)
                sel = {
                    "chosen_alpha": chosen["alpha"],
                    "reason": "highest mean reward",
                    "baseline_mean": bmean,
                    "chosen_mean": chosen["mean_reward"],
                    "gain": chosen["mean_reward"] - bmean,
                    "ci_low": lo,
                    "ci_high": hi,
                }
            else:
                sel = {
                    "chosen_alpha": None,
                    "reason": "no alpha beats the baseline",
                    "baseline_mean": bmean,
                    "chosen_mean": None,
                    "gain": None,
                    "ci_low": None,
                    "ci_high": None,
                }
            sel |= {"confidence": 0.95, "strategy": "grid", "rejected": rejected}
            pair.sweep = {
                "pair": p.name,
                "fingerprint": fingerprint(pair=p.name, stage="sweep"),
                "candidates": sorted(cands, key=lambda c: c["alpha"]),
                "selection": sel,
            }
            layout = run.pair(p.name)
            atomic_write_json(layout.sweep, pair.sweep)
            led.start(p.name, "select", "fp-select")
            led.done(p.name, "select", "fp-select", artifact=layout.sweep, info=sel)
            if chosen is None:
                continue
            led.start(p.name, "materialize", "fp-materialize")
            layout.model.mkdir(parents=True, exist_ok=True)
            atomic_write_json(layout.model / "config.json", {"model_type": "llama"})
            atomic_write_json(
                layout.model / "expo_provenance.json",
                {
                    "alpha": chosen["alpha"],
                    "dtype": "bfloat16",
                    "sft_sha": SHA_A,
                    "aligned_sha": SHA_B,
                    "fingerprint": "fp-materialize",
                },
            )
            led.done(p.name, "materialize", "fp-materialize", artifact=layout.model)
            led.start(p.name, "card", "fp-card")
            led.done(p.name, "card", "fp-card", artifact=layout.model / "README.md")
    finally:
        led.close()
    return FakeRun(root, fake)
