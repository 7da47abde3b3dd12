"""Benchmark of the alpha sweep on the tiny test models (CPU).

Side by side:
  (a) switching alpha in place (``TransformersBackend.set_weights_alpha``),
  (b) writing the candidate with ``extrapolate_checkpoint`` and loading it fresh,
  (c) generating one candidate (all prompts at the manifest's sampling settings),
and the transformers backend's generation throughput against a plain ``model.generate`` call on
the same batches (same temperature / top-k / top-p / max tokens; EOS disabled in both so every
call runs exactly max_tokens steps).

    python benchmarks/bench_sweep.py [--prompts 32] [--max-tokens 64] [--batch-size 16]
                                     [--repeats 5] [--threads 1] [--clock cpu|wall]

Targets (issue 5): (a) < 5% of (c), (b) / (a) >= 10, backend throughput within 10% of plain.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import tiny  # noqa: E402

CLOCK = time.perf_counter


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return statistics.median(times), times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier figures)")
    ap.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu = process time (robust on a shared machine), wall = elapsed time",
    )
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, GenerationConfig

    from expo_batch.extrapolate import extrapolate_checkpoint
    from expo_batch.generate import get_backend
    from expo_batch.manifest import SamplingConfig
    from expo_batch.prompts import render_prompt_ids

    root = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    tok = tiny.build_tokenizer()
    sft = tiny.build_policy(seed=0)
    aligned = tiny.perturbed(sft, scale=0.05, seed=1)
    sft_dir = tiny.save_policy(sft, tok, root / "sft")
    aligned_dir = tiny.save_policy(aligned, tok, root / "aligned")
    n_params = sum(p.numel() for p in sft.parameters())

    backend = get_backend("transformers")(sft_dir, aligned_dir, dtype="float32", device="cpu")
    texts = [
        " ".join(tiny.corpus(args.prompts, seed=3)[i].split()[: 3 + i % 9])
        for i in range(args.prompts)
    ]
    prompt_ids = [render_prompt_ids(backend.tokenizer, t) for t in texts]
    batches = [
        prompt_ids[i : i + args.batch_size] for i in range(0, len(prompt_ids), args.batch_size)
    ]
    sampling = SamplingConfig(max_tokens=args.max_tokens)  # the paper's settings, penalties 0.1
    no_pen = sampling.model_copy(update={"presence_penalty": 0.0, "frequency_penalty": 0.0})
    # EOS off in both paths so every call runs exactly max_tokens steps.
    backend.eos = []
    backend.model.generation_config.eos_token_id = None

    alphas = iter([0.1, 0.2, 0.3, 0.4, 0.5] * 100)
    t_switch = min(timed(lambda: backend.set_weights_alpha(next(alphas)), args.repeats * 4)[1])

    def write_and_load():
        out = root / f"cand-{time.perf_counter_ns()}"
        extrapolate_checkpoint(sft_dir, aligned_dir, 0.3, out)
        AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()

    t_write_load = min(timed(write_and_load, args.repeats)[1])
    # Writing goes through fsync: its waiting is not CPU time, so show the wall figure as well.
    clock, CLOCK = CLOCK, time.perf_counter
    w_switch = min(timed(lambda: backend.set_weights_alpha(next(alphas)), args.repeats * 4)[1])
    w_write_load = min(timed(write_and_load, args.repeats)[1])
    CLOCK = clock

    def candidate(s):
        return lambda: [backend.generate(b, s, []) for b in batches]

    candidate(sampling)()  # warm-up
    t_gen_nopen = min(timed(candidate(no_pen), args.repeats)[1])

    model = backend.model
    pad = backend.pad_id

    def plain():
        for b in batches:
            ids, mask, _ = backend._batch(b)
            cfg = GenerationConfig(
                do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k,
                top_p=sampling.top_p, max_new_tokens=sampling.max_tokens, pad_token_id=pad,
            )  # fmt: skip
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)

    plain()
    # Interleaved, best of N: on a shared machine the minimum is the least disturbed figure.
    ours_t, plain_t = [], []
    for _ in range(args.repeats):
        ours_t.append(timed(candidate(sampling), 1)[0])
        plain_t.append(timed(plain, 1)[0])
    t_gen, t_plain = min(ours_t), min(plain_t)

    tokens = args.prompts * args.max_tokens
    print(
        f"tiny Llama: {n_params / 1e3:.0f}k parameters, fp32, CPU threads {torch.get_num_threads()}"
    )
    print(
        f"{args.prompts} prompts x {args.max_tokens} tokens, batch {args.batch_size}, "
        f"best of {args.repeats}, {args.clock} time"
    )
    print(f"(a) switch alpha in place          {t_switch * 1e3:9.2f} ms")
    print(
        f"(b) write checkpoint + fresh load  {t_write_load * 1e3:9.2f} ms   "
        f"(b)/(a) = {t_write_load / t_switch:7.1f}x"
    )
    print(
        f"    wall time: (a) {w_switch * 1e3:.2f} ms, (b) {w_write_load * 1e3:.2f} ms, "
        f"(b)/(a) = {w_write_load / w_switch:.1f}x"
    )
    print(
        f"(c) generate one candidate         {t_gen * 1e3:9.2f} ms   "
        f"(a)/(c) = {100 * t_switch / t_gen:6.2f}%"
    )
    print(f"backend generate (penalties 0.1)   {tokens / t_gen:9.0f} tok/s")
    print(f"backend generate (no penalties)    {tokens / t_gen_nopen:9.0f} tok/s")
    print(
        f"plain model.generate (do_sample)   {tokens / t_plain:9.0f} tok/s   "
        f"backend/plain = {t_plain / t_gen:5.3f}"
    )


if __name__ == "__main__":
    main()
