"""The paper's headline claims, in miniature, on the bundled tiny world (examples/tiny).

Runs the tiny registry through the real batch pipeline with a wide alpha grid (interpolation
-0.75..-0.25 and extrapolation up to 10) on all 64 dev prompts, plus the SFT model itself as a
baseline, then reports for each claim what the numbers show, honestly:

  (a) reward rises with alpha up to an optimum, then collapses into degenerate answers;
  (b) the optimal alpha is larger for less-trained checkpoints;
  (c) a 20%-trained checkpoint plus ExPO matches or beats the fully trained one;
  (d) interpolated models (-1 < alpha < 0) score between the SFT and the aligned model.

Alongside the reward model's score it reports the task's true quality (the closed-form
`quality()` of scripts/build_tiny_world.py), since a reward model can be exploited.

    python benchmarks/repro_tiny.py [--output outputs] [--prompts 64] [--max-tokens 48]

The run folder is outputs/tiny-repro; rerunning reuses what the ledger says is done.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "examples" / "tiny"
GRID = [-0.75, -0.5, -0.25, 0.25, 0.5, 1, 2, 3, 4, 6, 8, 10]
PAIRS = [("tiny-dpo-10", "dpo-10"), ("tiny-dpo-20", "dpo-20"), ("tiny-dpo-40", "dpo-40"),
         ("tiny-dpo-100", "dpo-100")]  # fmt: skip


def manifest_text(prompts: int, max_tokens: int) -> str:
    pairs = "".join(
        f"  - name: {name}\n    sft: {WORLD / 'sft'}\n    aligned: {WORLD / folder}\n"
        f"    stop_token_ids: [2]\n"
        for name, folder in PAIRS
    )
    # The SFT model against itself: its alpha 0 is the SFT baseline of claim (d).
    pairs += f"  - name: tiny-sft\n    sft: {WORLD / 'sft'}\n    aligned: {WORLD / 'sft'}\n    alphas: [1]\n    stop_token_ids: [2]\n"
    return (
        "name: tiny-repro\n"
        "defaults:\n"
        f"  alphas: {GRID}\n"
        f"  prompts: {{path: {WORLD / 'prompts.jsonl'}, limit: {prompts}}}\n"
        f"  sampling: {{temperature: 0.7, top_p: 0.9, top_k: 50, presence_penalty: 0.1,"
        f" frequency_penalty: 0.1, max_tokens: {max_tokens}, seed: 42}}\n"
        f"  scorer: {{model: {WORLD / 'rm'}, batch_size: 16}}\n"
        "  backend: transformers\n"
        "  batch_size: 64\n"
        f"pairs:\n{pairs}"
    )


def load_quality():
    spec = importlib.util.spec_from_file_location(
        "build_tiny_world", ROOT / "scripts" / "build_tiny_world.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_tiny_world"] = module
    spec.loader.exec_module(module)
    return module.quality


def curves(run_dir: Path, quality) -> dict[str, list[dict]]:
    """Per pair, per alpha: mean reward, mean true quality, length, truncation, degenerate."""
    from expo_batch.io import read_json, read_jsonl
    from expo_batch.layout import RunLayout

    run = RunLayout(run_dir)
    out: dict[str, list[dict]] = {}
    for name in [n for n, _ in PAIRS] + ["tiny-sft"]:
        sweep = read_json(run.pair(name).sweep)
        rows = []
        for m in sweep["candidates"]:
            gens = read_jsonl(run.pair(name).candidate(m["alpha"]).generations)
            q = [quality(g["prompt"], g["answer"]) for g in gens]
            rows.append({
                "alpha": m["alpha"], "reward": m["mean_reward"], "stderr": m["stderr"],
                "quality": statistics.fmean(q), "length": m["mean_length"],
                "truncated": m["truncation_rate"], "degenerate": m["degenerate_rate"],
            })  # fmt: skip
        out[name] = rows
    return out


def report(c: dict[str, list[dict]]) -> str:
    lines = []
    for name, _ in PAIRS:
        lines.append(
            f"\n{name}: alpha, reward ± stderr, true quality, length, truncated, degenerate"
        )
        for r in c[name]:
            lines.append(
                f"  {r['alpha']:>6.2f}  {r['reward']:7.3f} ± {r['stderr']:.3f}  {r['quality']:6.3f}"
                f"  {r['length']:5.1f}  {r['truncated']:5.1%}  {r['degenerate']:5.1%}"
            )
    sft = c["tiny-sft"][0]
    lines.append(f"\nSFT (theta0): reward {sft['reward']:.3f}, true quality {sft['quality']:.3f}")

    def best(rows, key):
        return max((r for r in rows if r["alpha"] >= 0), key=lambda r: r[key])

    def base(rows):
        return next(r for r in rows if r["alpha"] == 0)

    lines.append(
        "\n(a) optimum then collapse: best alpha by reward, and what the largest alpha does"
    )
    for name, _ in PAIRS:
        rows = c[name]
        b, last = best(rows, "reward"), rows[-1]
        lines.append(
            f"  {name}: best alpha {b['alpha']:g} (reward {b['reward']:.3f} vs {base(rows)['reward']:.3f} at 0);"
            f" at alpha {last['alpha']:g}: reward {last['reward']:.3f}, quality {last['quality']:.3f},"
            f" truncated {last['truncated']:.0%}, degenerate {last['degenerate']:.0%}"
        )
    lines.append("\n(b) optimal alpha by training fraction (reward; true quality)")
    for name, _ in PAIRS:
        lines.append(
            f"  {name}: {best(c[name], 'reward')['alpha']:g}; {best(c[name], 'quality')['alpha']:g}"
        )
    b20, full = best(c["tiny-dpo-20"], "reward"), base(c["tiny-dpo-100"])
    q20 = best(c["tiny-dpo-20"], "quality")
    lines.append(
        f"\n(c) DPO-20% + ExPO (alpha {b20['alpha']:g}) reward {b20['reward']:.3f} vs DPO-100% {full['reward']:.3f};"
        f" by true quality: {q20['quality']:.3f} (alpha {q20['alpha']:g}) vs {full['quality']:.3f}"
    )
    lines.append("\n(d) interpolation (-1 < alpha < 0) between SFT and aligned? (reward; quality)")
    for name, _ in PAIRS:
        a0 = base(c[name])
        for r in (r for r in c[name] if r["alpha"] < 0):
            lo, hi = sorted((sft["reward"], a0["reward"]))
            inside = lo <= r["reward"] <= hi
            lines.append(
                f"  {name} alpha {r['alpha']:g}: {r['reward']:.3f} ({'between' if inside else 'outside'}"
                f" SFT {sft['reward']:.3f} and aligned {a0['reward']:.3f}); quality {r['quality']:.3f}"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--output", type=Path, default=ROOT / "outputs")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()

    from expo_batch.manifest import parse_manifest
    from expo_batch.pipeline import run
    from expo_batch.plan import build_plan
    from expo_batch.progress import RunProgress

    text = manifest_text(args.prompts, args.max_tokens)
    path = args.output / "tiny-repro.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    t0 = time.perf_counter()
    summary = run(
        build_plan(parse_manifest(text, path), output=args.output), progress=RunProgress()
    )
    elapsed = time.perf_counter() - t0
    c = curves(summary.run_dir, load_quality())
    (summary.run_dir / "repro.json").write_text(json.dumps(c, indent=1))
    print(report(c))
    print(f"\n{len(c)} sweeps in {elapsed:.0f} s; run folder {summary.run_dir}")


if __name__ == "__main__":
    main()
