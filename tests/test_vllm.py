"""The vLLM backend (run with scripts/test_vllm.sh, in the .venv-vllm venv; marked `vllm`).

Fresh engines for comparison run in a subprocess: one in-process engine per test process is the
setup that is known to work on CPU (VLLM_ENABLE_V1_MULTIPROCESSING=0, OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

from expo_batch.generate import get_backend  # noqa: E402
from expo_batch.manifest import SamplingConfig  # noqa: E402
from expo_batch.prompts import render_prompt_ids  # noqa: E402

ENGINE = {"max_model_len": 256, "max_num_seqs": 8}
TEXTS = [
    "hello there",
    "what is the answer to the question of time please",
    "list",
    "go water people",
]
SAMPLED = SamplingConfig(max_tokens=16)


@pytest.fixture(scope="module")
def backend(tiny_pair):
    b = get_backend("vllm")(*tiny_pair, dtype="float32", **ENGINE)
    yield b
    b.close()


@pytest.fixture(scope="module")
def prompt_ids(backend):
    return [render_prompt_ids(backend.tokenizer, t) for t in TEXTS]


def _fresh_engine(model_dir, prompt_ids, sampling: SamplingConfig, stop_ids=()):
    """Generate with a brand-new engine on ``model_dir`` in a child process."""
    script = textwrap.dedent(
        """
        import json, sys
        from vllm import LLM, TokensPrompt
        from expo_batch.generate.vllm_backend import sampling_params
        from expo_batch.manifest import SamplingConfig
        a = json.loads(sys.argv[1])
        llm = LLM(model=a["model"], dtype="float32", enforce_eager=True, seed=42, **a["engine"])
        sp = sampling_params(SamplingConfig.model_validate(a["sampling"]), a["stop"])
        prompts = [TokensPrompt(prompt_token_ids=p) for p in a["prompts"]]
        outs = [o.outputs[0] for o in llm.generate(prompts, sp, use_tqdm=False)]
        print("RESULT" + json.dumps([[c.text, len(c.token_ids), c.finish_reason] for c in outs]))
        """
    )
    payload = {
        "model": str(model_dir),
        "engine": ENGINE,
        "sampling": sampling.model_dump(),
        "stop": list(stop_ids),
        "prompts": prompt_ids,
    }
    code = [sys.executable, "-c", script, json.dumps(payload)]
    proc = subprocess.run(code, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return [tuple(r) for r in json.loads(line[len("RESULT") :])]


def _triples(gens):
    return [(g.text, g.n_tokens, g.finish_reason) for g in gens]


def test_generation_is_seeded_and_per_prompt(backend, prompt_ids):
    gens = backend.generate(prompt_ids, SAMPLED, [])
    assert len(gens) == 4 and all(g.finish_reason in ("stop", "length") for g in gens)
    assert all(1 <= g.n_tokens <= 16 for g in gens)
    assert backend.generate(prompt_ids, SAMPLED, []) == gens
    assert backend.generate(prompt_ids[1:2], SAMPLED, [])[0] == gens[1]


def test_greedy_with_penalties_matches_the_transformers_backend(backend, prompt_ids, tiny_pair):
    """The transformers penalty processor means what vLLM's penalties mean."""
    greedy = SamplingConfig(
        temperature=0, presence_penalty=0.5, frequency_penalty=0.7, max_tokens=16
    )
    hf = get_backend("transformers")(*tiny_pair, dtype="float32", device="cpu")
    try:
        expected = hf.generate(prompt_ids, greedy, [])
    finally:
        hf.close()
    assert _triples(backend.generate(prompt_ids, greedy, [])) == _triples(expected)


def test_stop_ids(backend, prompt_ids):
    greedy = SamplingConfig(temperature=0, presence_penalty=0, frequency_penalty=0, max_tokens=16)
    first = backend.generate(prompt_ids[:1], greedy, [])[0]
    ids = (
        backend.llm.generate(
            [vllm.TokensPrompt(prompt_token_ids=prompt_ids[0])],
            vllm.SamplingParams(temperature=0, max_tokens=16),
            use_tqdm=False,
        )[0]
        .outputs[0]
        .token_ids
    )
    stop = ids[3]
    stopped = backend.generate(prompt_ids[:1], greedy, [stop])[0]
    assert stopped.finish_reason == "stop" and stopped.n_tokens == list(ids).index(stop) + 1
    assert first.n_tokens >= stopped.n_tokens


def test_in_place_switch_equals_a_fresh_engine_on_the_written_checkpoint(
    backend, prompt_ids, tiny_pair, tmp_path
):
    from expo_batch.extrapolate import extrapolate_checkpoint

    base = backend.generate(prompt_ids, SAMPLED, [])
    folder = extrapolate_checkpoint(tiny_pair[0], tiny_pair[1], 3.0, tmp_path / "a3")
    backend.set_weights_alpha(3.0)
    switched = backend.generate(prompt_ids, SAMPLED, [])
    assert switched != base
    assert _triples(switched) == _fresh_engine(folder, prompt_ids, SAMPLED)
    backend.set_weights_alpha(0.0)
    assert backend.generate(prompt_ids, SAMPLED, []) == base


def test_long_prompt_after_a_switch_does_not_reuse_stale_prefix_cache(backend, tiny_pair):
    long_ids = render_prompt_ids(backend.tokenizer, " ".join(["people water time answer"] * 20))
    greedy = SamplingConfig(temperature=0, presence_penalty=0, frequency_penalty=0, max_tokens=8)
    at0 = backend.generate([long_ids], greedy, [])
    backend.set_weights_alpha(3.0)
    at3 = backend.generate([long_ids], greedy, [])
    backend.set_weights_alpha(0.0)
    assert backend.generate([long_ids], greedy, []) == at0
    hf = get_backend("transformers")(*tiny_pair, dtype="float32", device="cpu")
    try:
        hf.set_weights_alpha(3.0)
        assert _triples(at3) == _triples(hf.generate([long_ids], greedy, []))
    finally:
        hf.close()


def test_reward_scores_match_transformers(tiny_reward_model, tmp_path):
    from expo_batch.score import RewardModelScorer

    prompts = ["what is the time", "hi", "explain water"]
    answers = ["it is now", "hello to you and thanks", "  sure\n"]
    expected = RewardModelScorer(str(tiny_reward_model), dtype="float32", device="cpu").score(
        prompts, answers
    )
    code = textwrap.dedent(
        f"""
        import json
        from expo_batch.score import VllmRewardScorer
        s = VllmRewardScorer({str(tiny_reward_model)!r}, dtype="float32", max_model_len=256)
        print("RESULT" + json.dumps(s.score({prompts!r}, {answers!r})))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))[6:])
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-5
