"""Generation: vLLM-style penalties and sampling, stop ids, finish reasons, the in-place switch."""

from __future__ import annotations

import pytest
import torch

from expo_batch.errors import UsageError
from expo_batch.generate import get_backend, resolve_stop_ids
from expo_batch.generate.penalties import PenaltyLogitsProcessor, apply_penalties
from expo_batch.generate.sampling import SeededSampler, top_k_top_p, uniform_noise
from expo_batch.manifest import SamplingConfig
from expo_batch.prompts import render_prompt_ids

GREEDY = SamplingConfig(temperature=0, presence_penalty=0, frequency_penalty=0, max_tokens=12)


@pytest.fixture(scope="module")
def backend(tiny_pair):
    b = get_backend("transformers")(*tiny_pair, dtype="float32", device="cpu")
    yield b
    b.close()


@pytest.fixture(scope="module")
def prompts(backend):
    texts = ["hello there", "what is the answer to the question of time please", "list", "go"]
    return [render_prompt_ids(backend.tokenizer, t) for t in texts]


def test_penalties_follow_vllms_formula_over_generated_tokens_only():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    # prompt = [4, 4] (ignored), generated = [1, 1, 2]
    input_ids = torch.tensor([[4, 4, 1, 1, 2]])
    proc = PenaltyLogitsProcessor(prompt_len=2, vocab_size=5, presence=0.5, frequency=0.25)
    out = proc(input_ids, logits.clone())
    expected = torch.tensor([[1.0, 2.0 - 0.5 - 2 * 0.25, 3.0 - 0.5 - 0.25, 4.0, 5.0]])
    assert torch.allclose(out, expected)
    # incremental: one more token (4) is counted once, the prompt's 4s still are not
    out = proc(torch.tensor([[4, 4, 1, 1, 2, 4]]), logits.clone())
    assert torch.isclose(out[0, 4], torch.tensor(5.0 - 0.5 - 0.25)) and out[0, 3] == 4.0
    # negative penalties reward repetition, as in vLLM
    assert apply_penalties(logits, torch.tensor([[0, 2, 0, 0, 0]]), -1.0, 0.0)[0, 1] == 3.0


def test_top_k_top_p_match_vllm_semantics():
    logits = torch.log(torch.tensor([[0.05, 0.1, 0.15, 0.3, 0.4]]))
    k2 = top_k_top_p(logits, 2, 1.0)
    assert torch.isinf(k2[0, :3]).all() and torch.isfinite(k2[0, 3:]).all()
    # top_p=0.6: vLLM keeps the smallest set from the top whose mass reaches p -> {0.4, 0.3}
    p = top_k_top_p(logits, 0, 0.6)
    assert torch.isinf(p[0, :3]).all() and torch.isfinite(p[0, 3:]).all()
    assert torch.equal(top_k_top_p(logits, -1, 1.0), logits)
    # both: k first, then p over the survivors' renormalised mass
    kp = top_k_top_p(logits, 3, 0.5)
    assert torch.isfinite(kp[0, 3:]).all() and torch.isinf(kp[0, :3]).all()


def test_seeded_sampler_draws_from_the_softmax():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 8000
    sampler = SeededSampler(list(range(n)), 0, 4, temperature=1.0, top_k=0, top_p=1.0,
                            presence_penalty=0, frequency_penalty=0)  # fmt: skip
    scores = sampler(torch.zeros(n, 0, dtype=torch.long), torch.log(probs).expand(n, 4).clone())
    freq = torch.bincount(scores.argmax(-1), minlength=4).float() / n
    assert torch.allclose(freq, probs, atol=0.02), freq
    # the noise is a pure function of (key, step, token): same key, same draw
    keys = torch.tensor([5, 6, 5])
    u = uniform_noise(keys, 3, 10)
    assert torch.equal(u[0], u[2]) and not torch.equal(u[0], u[1])
    assert ((u > 0) & (u < 1)).all()


def test_sampling_is_seeded_and_independent_of_the_batch(backend, prompts):
    s = SamplingConfig(max_tokens=16)
    batch = backend.generate(prompts, s, [])
    assert backend.generate(prompts, s, []) == batch
    alone = [backend.generate([p], s, [])[0] for p in prompts]
    assert alone == batch
    reordered = backend.generate(prompts[::-1], s, [])[::-1]
    assert reordered == batch
    other_seed = backend.generate(prompts, s.model_copy(update={"seed": 7}), [])
    assert other_seed != batch


def test_greedy_length_and_stop_ids(backend, prompts):
    first = backend.generate(prompts[:1], GREEDY, [])[0]
    assert first.finish_reason == "length" and first.n_tokens == GREEDY.max_tokens
    ids = backend.tokenizer(first.text, add_special_tokens=False)["input_ids"]
    # Greedy continuation is deterministic: make its 4th token a stop token.
    row = _greedy_ids(backend, prompts[0], GREEDY.max_tokens)
    stop = row[3]
    k = row.index(stop)
    stopped = backend.generate(prompts[:1], GREEDY, [stop])[0]
    assert stopped.finish_reason == "stop" and stopped.n_tokens == k + 1
    assert stopped.text == backend.tokenizer.decode(row[:k], skip_special_tokens=True)
    assert ids  # the unstopped answer decodes to something


def _greedy_ids(backend, prompt, n):
    with torch.no_grad():
        out = backend.model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt) :].tolist()


def test_penalties_change_the_output_end_to_end(backend, prompts):
    plain = backend.generate(prompts, GREEDY.model_copy(update={"max_tokens": 24}), [])
    pen = GREEDY.model_copy(
        update={"max_tokens": 24, "frequency_penalty": 2.0, "presence_penalty": 2.0}
    )
    penalised = backend.generate(prompts, pen, [])

    def repeats(g):
        toks = backend.tokenizer(g.text, add_special_tokens=False)["input_ids"]
        return len(toks) - len(set(toks))

    assert sum(map(repeats, penalised)) < sum(map(repeats, plain))


def test_in_place_switch_equals_a_fresh_load_of_the_written_checkpoint(
    backend, tiny_pair, tmp_path
):
    from transformers import AutoModelForCausalLM

    from expo_batch.extrapolate import extrapolate_checkpoint

    x = torch.randint(4, 300, (2, 11))
    for alpha in (0.5, 2.0):
        folder = extrapolate_checkpoint(tiny_pair[0], tiny_pair[1], alpha, tmp_path / f"a{alpha}")
        fresh = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        backend.set_weights_alpha(alpha)
        assert backend.alpha == alpha
        with torch.no_grad():
            assert torch.equal(backend.model(x).logits, fresh(x).logits)
    original = AutoModelForCausalLM.from_pretrained(tiny_pair[1], dtype=torch.float32).eval()
    backend.set_weights_alpha(0.0)
    with torch.no_grad():
        assert torch.equal(backend.model(x).logits, original(x).logits)


def test_registry_and_stop_ids(tiny_pair):
    with pytest.raises(UsageError, match="unknown generation backend"):
        get_backend("nope")
    assert resolve_stop_ids(tiny_pair[1], [7, 2]) == [2, 7]
