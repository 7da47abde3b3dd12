"""The sweep: records, resume, metrics, degenerate answers, and the CLI."""

from __future__ import annotations

import json

import pytest

from expo_batch.generate import get_backend
from expo_batch.io import read_jsonl
from expo_batch.layout import CandidateLayout
from expo_batch.manifest import PromptsConfig, SamplingConfig, ScorerConfig, Settings
from expo_batch.metrics import candidate_metrics, is_degenerate
from expo_batch.prompts import load_prompts
from expo_batch.score import load_scorer
from expo_batch.sweep import finalize_candidate, generate_candidate, score_candidate, sweep_alphas

SAMPLING = SamplingConfig(max_tokens=10)
SCORER = ScorerConfig(function="tests.test_score:length_score")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    words = [
        "the",
        "water",
        "people",
        "time",
        "answer",
        "question",
        "list",
        "name",
        "give",
        "tell",
        "short",
        "good",
        "help",
    ]
    rows = [
        {"id": f"q{i}", "prompt": " ".join(words[: 1 + (i * 5) % len(words)])} for i in range(9)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def backend(tiny_pair):
    b = get_backend("transformers")(*tiny_pair, dtype="float32", device="cpu")
    yield b
    b.close()


class CountingBackend:
    def __init__(self, inner):
        self.inner, self.switches = inner, []
        self.tokenizer = inner.tokenizer

    def set_weights_alpha(self, alpha):
        self.switches.append(alpha)
        self.inner.set_weights_alpha(alpha)

    def generate(self, *a):
        return self.inner.generate(*a)


def _by_id(rows):
    return {r["prompt_id"]: r for r in rows}


def test_resume_of_a_partial_candidate_matches_an_uninterrupted_run(backend, prompt_file, tmp_path):
    ps = load_prompts(PromptsConfig(path=prompt_file))
    scorer = load_scorer(SCORER)
    full = CandidateLayout(tmp_path / "full")
    assert generate_candidate(backend, 0.5, ps, SAMPLING, [], full, batch_size=4) == 9
    assert score_candidate(scorer, ps, full, batch_size=4) == 9
    m_full = finalize_candidate(full, 0.5, ps)
    assert m_full["complete"] and m_full["n"] == 9

    part = CandidateLayout(tmp_path / "part")
    generate_candidate(backend, 0.5, ps, SAMPLING, [], part, batch_size=4)
    score_candidate(scorer, ps, part, batch_size=4)
    # A crash mid-write: keep the first chunk's lines plus a torn half line.
    for path in (part.generations, part.rewards):
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    backend.set_weights_alpha(0.0)  # the resumed run must switch back to its alpha
    counting = CountingBackend(backend)
    assert generate_candidate(counting, 0.5, ps, SAMPLING, [], part, batch_size=4) == 5
    assert counting.switches == [0.5]
    assert score_candidate(scorer, ps, part, batch_size=4) == 5
    assert _by_id(read_jsonl(part.generations)) == _by_id(read_jsonl(full.generations))
    assert _by_id(read_jsonl(part.rewards)) == _by_id(read_jsonl(full.rewards))
    assert finalize_candidate(part, 0.5, ps) == m_full

    # Complete: nothing to do, and the weights are not touched.
    counting = CountingBackend(backend)
    assert generate_candidate(counting, 0.5, ps, SAMPLING, [], part, batch_size=4) == 0
    assert score_candidate(scorer, ps, part, batch_size=4) == 0
    assert counting.switches == []


def test_records_have_the_documented_fields(backend, prompt_file, tmp_path):
    ps = load_prompts(PromptsConfig(path=prompt_file, limit=2))
    lay = CandidateLayout(tmp_path / "c")
    generate_candidate(backend, 0.0, ps, SAMPLING, [], lay, batch_size=8)
    row = read_jsonl(lay.generations)[0]
    assert set(row) == {"prompt_id", "prompt", "answer", "n_tokens", "finish_reason"}
    assert (
        row["finish_reason"] in ("stop", "length") and 1 <= row["n_tokens"] <= SAMPLING.max_tokens
    )


def test_candidate_metrics():
    gens = [
        {"prompt_id": "a", "answer": "fine answer", "n_tokens": 4, "finish_reason": "stop"},
        {"prompt_id": "b", "answer": "ok " * 40, "n_tokens": 10, "finish_reason": "length"},
        {"prompt_id": "c", "answer": "another one", "n_tokens": 7, "finish_reason": "stop"},
    ]
    rewards = [
        {"prompt_id": "a", "reward": 1.0},
        {"prompt_id": "b", "reward": -1.0},
        {"prompt_id": "c", "reward": 3.0},
    ]
    m = candidate_metrics(gens, rewards)
    assert m["n"] == 3 and m["mean_reward"] == 1.0
    assert m["stderr"] == pytest.approx(2.0 / 3**0.5)
    assert m["mean_length"] == 7.0
    assert m["truncation_rate"] == pytest.approx(1 / 3) and m["degenerate_rate"] == pytest.approx(
        1 / 3
    )
    assert candidate_metrics([], [])["mean_reward"] is None


def test_degenerate_detection():
    prose = (
        "Water boils at one hundred degrees Celsius at sea level. At higher altitudes the air "
        "pressure is lower, so it boils at a lower temperature, which is why cooking pasta in the "
        "mountains takes longer than you might expect."
    )
    assert not is_degenerate(prose, 50, "stop")
    assert not is_degenerate(prose, 2048, "length")  # truncated but not repeating
    assert is_degenerate(prose + " I hope this helps!" * 6, 90, "stop")  # a loop at the end
    assert is_degenerate("!" * 60, 60, "length")
    looping = " ".join(
        ["the answer is the answer is"] * 4 + ["so the answer is clear and the answer is"] * 3
    )
    assert is_degenerate(looping, 60, "length")
    assert not is_degenerate("ha ha", 2, "stop")  # too short to call
    # token salad: undecodable fragments and control characters (a collapsed byte-level model)
    salad = "ers1ve~\ufffd\u0003\ufffd\u0012\ufffd\ufffd\ufffd^\ufffdncharts\ufffd\ufffd(\ufffd colose\ufffd body"
    assert is_degenerate(salad, 48, "length")
    assert not is_degenerate(
        "Caf\u00e9 na\u00efve r\u00e9sum\u00e9, \u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002",
        20,
        "stop",
    )
    assert not is_degenerate("", 1, "stop")


def test_sweep_alphas_always_include_the_baseline():
    assert sweep_alphas([0.5, 0.1, 0.5]) == [0.0, 0.1, 0.5]


def test_cli_sweep_smoke(tiny_pair, prompt_file, tmp_path):
    from typer.testing import CliRunner

    from expo_batch.cli import app

    out = tmp_path / "pair"
    args = [
        "sweep", str(tiny_pair[0]), str(tiny_pair[1]), "--grid", "0.5",
        "--prompts", str(prompt_file),
        "--limit", "3", "--max-tokens", "6", "--scorer", "tests.test_score:length_score",
        "--output", str(out), "--device", "cpu", "--dtype", "float32",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "0.00" in result.stdout and "0.50" in result.stdout and "mean reward" in result.stdout
    for label in ("0.00", "0.50"):
        metrics = json.loads((out / f"alpha-{label}" / "metrics.json").read_text())
        assert metrics["n"] == 3 and metrics["complete"]
    sweep = json.loads((out / "sweep.json").read_text())
    assert [c["alpha"] for c in sweep["candidates"]] == [0.0, 0.5]
    # Rerun: everything is complete, nothing is loaded or generated again.
    before = (out / "alpha-0.50" / "generations.jsonl").read_text()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "alpha-0.50" / "generations.jsonl").read_text() == before


def test_sweep_pair_low_memory_generates_before_scoring(tiny_pair, prompt_file, tmp_path):
    from expo_batch.sweep import sweep_pair

    order = []

    settings = Settings(
        prompts=PromptsConfig(path=prompt_file, limit=2),
        sampling=SAMPLING,
        scorer=SCORER,
        dtype="float32",
    )
    results = sweep_pair(
        *tiny_pair, [0.3], settings, [], tmp_path / "p", low_memory=True, device="cpu",
        on_event=lambda stage, alpha, done, total: order.append((stage, alpha)),
    )  # fmt: skip
    assert [r["alpha"] for r in results] == [0.0, 0.3]
    stages = [s for s, _ in order]
    assert stages == sorted(
        stages, key=lambda s: s != "generate"
    )  # every generate before any score
