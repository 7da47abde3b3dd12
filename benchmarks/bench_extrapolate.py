"""Benchmark: expo-batch extrapolation vs the authors' whole-model approach vs the I/O floor.

Builds Qwen2-shaped bf16 pairs with random weights (written straight to safetensors shards, SFT
and aligned sharded differently), warms the page cache, then runs each approach in a fresh
subprocess and records its wall time and peak RSS (``os.wait4`` rusage of that child alone):

- ``expo-batch``: ``python -m expo_batch extrapolate SFT ALIGNED --alpha A -o OUT``;
- ``whole-model``: the authors' ``extrapolate.py``: load both models with transformers in bf16,
  ``p = p + alpha * (p - p_sft)`` over ``named_parameters()``, ``save_pretrained``;
- ``io-floor``: read every byte of both checkpoints and write the aligned model's bytes once.

Usage::

    python benchmarks/bench_extrapolate.py                 # 0.5b and 1.5b, temp files removed
    python benchmarks/bench_extrapolate.py --sizes 0.5b --workdir /data/bench --keep

Not a test: timings depend on the machine. Needs about 4x the model size in free disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Qwen2 shapes: about 0.5B (Qwen2.5-0.5B) and 1.5B (Qwen2-1.5B) parameters, tied embeddings.
SIZES = {
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
    ),
}
GIB = 1 << 30


def build_pair(root: Path, size: str, seed: int = 0) -> tuple[Path, Path, int]:
    """Write sft/ and aligned/ folders; aligned = sft + a small random delta. Returns n params."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from expo_batch.checkpoint import PlannedShardWriter
    from expo_batch.compat import TensorSpec

    cfg = Qwen2Config(vocab_size=151936, tie_word_embeddings=True, **SIZES[size])
    cfg.dtype = "bfloat16"
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    specs = [
        (name, TensorSpec(tuple(p.shape), "BF16"))
        for name, p in model.state_dict().items()
        if name != "lm_head.weight"  # tied: transformers does not store it
    ]
    n_params = sum(s.numel for _, s in specs)
    sft_dir, al_dir = root / "sft", root / "aligned"
    # Different shard layouts on purpose: the engine must not care.
    for folder in (sft_dir, al_dir):
        folder.mkdir(parents=True)
        cfg.save_pretrained(folder)
        GenerationConfig(do_sample=True, temperature=0.7).save_pretrained(folder)
    w_sft = PlannedShardWriter(sft_dir, specs, 700 * 10**6)
    w_al = PlannedShardWriter(al_dir, specs, 2 * 10**9)
    # The two writers' orders may differ (shards sort by dtype); all BF16 here, so they match.
    assert w_sft.order == w_al.order
    g = torch.Generator().manual_seed(seed)
    by_name = dict(specs)
    chunk = 1 << 24
    for name in w_al.order:
        n = by_name[name].numel
        for s in range(0, n, chunk):
            k = min(chunk, n - s)
            base = torch.randn(k, generator=g) * 0.02
            w_sft.write(name, base.to(torch.bfloat16))
            base += torch.randn(k, generator=g) * 2e-4
            w_al.write(name, base.to(torch.bfloat16))
    w_sft.close()
    w_al.close()
    return sft_dir, al_dir, n_params


WHOLE_MODEL = r"""
import sys, torch
from transformers import AutoModelForCausalLM
sft_dir, al_dir, alpha, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
base = AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.bfloat16)
model = AutoModelForCausalLM.from_pretrained(al_dir, dtype=torch.bfloat16)
model.generation_config.do_sample = True
base_sd = base.state_dict()
with torch.no_grad():
    for name, param in model.named_parameters():
        param.data = param.data + alpha * (param.data - base_sd[name].data)
model.save_pretrained(out)
"""

IO_FLOOR = r"""
import os, sys
from pathlib import Path
sft_dir, al_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
out.mkdir()
buf = bytearray(8 << 20)
mv = memoryview(buf)
def weights(d):
    return sorted(p for p in d.iterdir() if p.suffix == ".safetensors")
for p in weights(sft_dir):
    with open(p, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
for p in weights(al_dir):
    with open(p, "rb", buffering=0) as f, open(out / p.name, "wb", buffering=0) as g:
        while n := f.readinto(buf):
            g.write(mv[:n])
"""


def run_child(argv: list[str]) -> tuple[float, float, float, int]:
    """Run ``argv``; return (wall s, CPU s, peak RSS GiB of that child, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        print(err[-3000:], file=sys.stderr)
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss * 1024 / GIB, proc.returncode


def warm(*folders: Path) -> None:
    buf = bytearray(8 << 20)
    for d in folders:
        for p in sorted(d.iterdir()):
            if p.is_file():
                with open(p, "rb", buffering=0) as f:
                    while f.readinto(buf):
                        pass


def sync() -> None:
    os.sync()
    time.sleep(1)


def compare_outputs(expo_out: Path, whole_out: Path, sft: Path, al: Path, alpha: float) -> dict:
    """How the authors' bf16 arithmetic differs from the exact result, on a few tensors."""
    import torch

    from expo_batch.checkpoint import Checkpoint

    e, w, s, a = (Checkpoint.open(p) for p in (expo_out, whole_out, sft, al))
    same_whole = same_ref = total = 0
    unchanged_whole = unchanged_expo = 0
    for name in [n for n in a.names if "layers.0." in n][:6]:
        x, y = e.get(name), w.get(name)
        ref = (a.get(name).double() + alpha * (a.get(name).double() - s.get(name).double())).to(
            torch.bfloat16
        )
        t1 = a.get(name)
        total += x.numel()
        same_whole += int((x.view(torch.int16) == y.view(torch.int16)).sum())
        same_ref += int((x.view(torch.int16) == ref.view(torch.int16)).sum())
        unchanged_whole += int((y.view(torch.int16) == t1.view(torch.int16)).sum())
        unchanged_expo += int((x.view(torch.int16) == t1.view(torch.int16)).sum())
    return {
        "elements_compared": total,
        "expo_equals_float64_reference": same_ref / total,
        "whole_model_bf16_equals_expo": same_whole / total,
        "expo_left_unchanged_vs_theta1": unchanged_expo / total,
        "whole_model_left_unchanged_vs_theta1": unchanged_whole / total,
    }


def bench_size(size: str, workdir: Path, alpha: float, repeat: int, keep: bool) -> dict:
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"expo-bench-{size}-", dir=workdir))
    try:
        t = time.perf_counter()
        # Built (and later compared) in child processes: this process stays small, because a
        # child's peak RSS as rusage reports it includes the parent's pages at fork time.
        sft, al = root / "sft", root / "aligned"
        n_params = int(_in_child("build_pair", str(root), size))
        model_bytes = sum(p.stat().st_size for p in al.glob("*.safetensors"))
        print(
            f"[{size}] built pair: {n_params / 1e9:.3f}B params, {model_bytes / GIB:.2f} GiB "
            f"per model, in {time.perf_counter() - t:.0f}s",
            flush=True,
        )
        py = sys.executable
        approaches = {
            "io-floor": lambda out: [py, "-c", IO_FLOOR, str(sft), str(al), str(out)],
            "expo-batch": lambda out: [
                py,
                "-m",
                "expo_batch",
                "extrapolate",
                str(sft),
                str(al),
                "--alpha",
                str(alpha),
                "--output",
                str(out),
                "--no-progress",
            ],  # fmt: skip
            "whole-model": lambda out: [
                py,
                "-c",
                WHOLE_MODEL,
                str(sft),
                str(al),
                str(alpha),
                str(out),
            ],
        }
        results: dict[str, dict] = {}
        for name, argv in approaches.items():
            walls, cpus, rsss = [], [], []
            for _ in range(repeat):
                out = root / f"out-{name}"
                shutil.rmtree(out, ignore_errors=True)
                sync()
                warm(sft, al)
                wall, cpu, rss, rc = run_child(argv(out))
                if rc != 0:
                    raise SystemExit(f"{name} failed with exit code {rc}")
                walls.append(wall)
                cpus.append(cpu)
                rsss.append(rss)
                print(
                    f"[{size}] {name:12s} wall {wall:7.2f}s  cpu {cpu:7.2f}s  "
                    f"peak RSS {rss:.2f} GiB  (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
            results[name] = {
                "wall_s": min(walls),
                "cpu_s": min(cpus),
                "peak_rss_gib": max(rsss),
                "walls": walls,
            }
        cmp = json.loads(
            _in_child(
                "compare_outputs",
                str(root / "out-expo-batch"),
                str(root / "out-whole-model"),
                str(sft),
                str(al),
                str(alpha),
            )
        )
        floor, expo, whole = (
            results[k]["wall_s"] for k in ("io-floor", "expo-batch", "whole-model")
        )
        summary = {
            "size": size,
            "params": n_params,
            "model_gib": model_bytes / GIB,
            "results": results,
            "expo_vs_floor": expo / floor,
            "whole_vs_expo": whole / expo,
            "accuracy": cmp,
        }
        return summary
    finally:
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _in_child(func: str, *args: str) -> str:
    """Run one function of this file in a fresh interpreter; return what it printed."""
    argv = [sys.executable, __file__, "--_call", func, *args]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def _call(func: str, args: list[str]) -> None:
    if func == "build_pair":
        _, _, n = build_pair(Path(args[0]), args[1])
        print(n)
    elif func == "compare_outputs":
        *paths, alpha = args
        print(json.dumps(compare_outputs(*map(Path, paths), float(alpha))))
    else:
        raise SystemExit(f"unknown function {func}")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--_call":
        _call(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.5b,1.5b", help="comma-separated: " + ",".join(SIZES))
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--repeat", type=int, default=1, help="runs per approach (best wall time)")
    ap.add_argument("--keep", action="store_true", help="keep the pairs and outputs")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()

    summaries = []
    for size in args.sizes.split(","):
        summaries.append(bench_size(size.strip(), args.workdir, args.alpha, args.repeat, args.keep))

    print(
        f"\n{'pair':6s} {'approach':12s} {'wall s':>8s} {'cpu s':>8s} {'peak RSS':>9s} "
        f"{'x floor':>8s}"
    )
    for s in summaries:
        floor = s["results"]["io-floor"]["wall_s"]
        for name, r in s["results"].items():
            print(
                f"{s['size']:6s} {name:12s} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} "
                f"{r['peak_rss_gib']:7.2f} G "
                f"{r['wall_s'] / floor:8.2f}"
            )
        print(
            f"{s['size']:6s} expo-batch / io-floor = {s['expo_vs_floor']:.2f}x; "
            f"whole-model / expo-batch = {s['whole_vs_expo']:.2f}x; accuracy {s['accuracy']}"
        )
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=2) + "\n")


if __name__ == "__main__":
    main()
