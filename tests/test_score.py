"""Scoring: the authors' reward recipe, padding invariance, and function scorers."""

from __future__ import annotations

import pytest
import torch

from expo_batch.errors import ScoringError
from expo_batch.manifest import ScorerConfig
from expo_batch.score import (
    FunctionScorer,
    RewardModelScorer,
    format_reward_text,
    length_batches,
    load_scorer,
    reward_input_ids,
)
from tests import tiny

PROMPTS = [
    "what is the time",
    "hi",
    "explain how to write a long answer about water and people please",
]
ANSWERS = ["it is now", "hello to you and thanks for the question it was good", "  sure\n"]


# Function scorers used by the tests (and by test_sweep) through their import path.
def length_score(prompts, answers):
    return [float(len(a)) for a in answers]


def short_score(prompts, answers):
    return [1.0]


def text_score(prompts, answers):
    return ["high" for _ in answers]


@pytest.fixture(scope="module")
def rm(tiny_reward_model):
    s = RewardModelScorer(str(tiny_reward_model), batch_size=4, dtype="float32", device="cpu")
    yield s
    s.close()


def test_reward_text_is_the_authors_recipe(rm):
    # RM template: "{bos}[INST] {user} [/INST] {assistant}{eos}", BOS string removed.
    text = format_reward_text(rm.tokenizer, "what is the time", "  it is now\n")
    assert text == "[INST] what is the time [/INST]   it is now\n</s>"
    assert (
        reward_input_ids(rm.tokenizer, "what is the time", "  it is now\n")
        == rm.tokenizer(text, add_special_tokens=True)["input_ids"]
    )


def test_rm_tokenizer_that_adds_bos_gets_exactly_one():
    from tokenizers import processors

    tok = tiny.build_tokenizer(tiny.RM_CHAT_TEMPLATE)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    ids = reward_input_ids(tok, "q", "a")
    assert ids[0] == 1 and ids.count(1) == 1


def test_scores_are_raw_logits_of_the_unpadded_text(rm, tiny_reward_model):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_reward_model, dtype=torch.float32
    ).eval()
    scores = rm.score(PROMPTS, ANSWERS)
    for p, a, s in zip(PROMPTS, ANSWERS, scores, strict=True):
        ids = torch.tensor([reward_input_ids(rm.tokenizer, p, a)])
        with torch.no_grad():
            expected = model(ids).logits[0, 0].item()  # one unpadded sequence: no pooling question
        assert abs(s - expected) < 1e-5
    assert all(isinstance(s, float) for s in scores)


def test_a_score_does_not_depend_on_its_batch(rm):
    many_p = PROMPTS * 3
    many_a = [a * (i + 1) for i, a in enumerate(ANSWERS * 3)]  # varied lengths -> padding
    batched = rm.score(many_p, many_a)
    alone = [rm.score([p], [a])[0] for p, a in zip(many_p, many_a, strict=True)]
    assert max(abs(x - y) for x, y in zip(batched, alone, strict=True)) < 1e-5
    rm1 = rm.batch_size
    try:
        rm.batch_size = 1
        assert (
            max(abs(x - y) for x, y in zip(rm.score(many_p, many_a), batched, strict=True)) < 1e-5
        )
    finally:
        rm.batch_size = rm1


def test_length_batches_sort_longest_first():
    assert length_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]


def test_function_scorer_and_its_checks():
    s = load_scorer(ScorerConfig(function="tests.test_score:length_score"))
    assert s.score(["a", "b"], ["xy", "xyz"]) == [2.0, 3.0]
    with pytest.raises(ScoringError, match="returned 1 scores for 2 answers"):
        FunctionScorer("tests.test_score:short_score").score(["a", "b"], ["x", "y"])
    with pytest.raises(ScoringError, match="expected a finite float"):
        FunctionScorer("tests.test_score:text_score").score(["a"], ["x"])
    with pytest.raises(ScoringError, match="cannot import module"):
        FunctionScorer("no_such_module_xyz:f")
    with pytest.raises(ScoringError, match="has no function"):
        FunctionScorer("tests.test_score:nothing_here")


def test_reward_model_errors(tmp_path):
    with pytest.raises(ScoringError, match="does not exist"):
        RewardModelScorer(str(tmp_path / "missing"), device="cpu")
