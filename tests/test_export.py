"""Judge exports: AlpacaEval model_outputs.json and FastChat MT-Bench model_answer jsonl."""

from __future__ import annotations

import json

import pytest

from expo_batch import export
from expo_batch.errors import ExpoError
from expo_batch.io import read_jsonl
from tests.fake_run import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("exp") / "demo")


def test_exports_of_a_chosen_pair(run):
    pair = run.layout.pair("zephyr-beta")
    written = export.write_exports(pair.root)
    names = sorted(p.relative_to(pair.exports).as_posix() for p in written)
    assert names == [
        "alpaca_eval/zephyr-beta-ExPO-a0.40/model_outputs.json",
        "alpaca_eval/zephyr-beta-base/model_outputs.json",
        "mt_bench/model_answer/zephyr-beta-ExPO-a0.40.jsonl",
        "mt_bench/model_answer/zephyr-beta-base.jsonl",
    ]
    gens = read_jsonl(pair.candidate(0.4).generations)
    ae = json.loads((pair.exports / names[0]).read_text())
    assert len(ae) == len(gens) == 24
    assert ae[3] == {
        "instruction": gens[3]["prompt"],
        "output": gens[3]["answer"],
        "generator": "zephyr-beta-ExPO-a0.40",
    }
    mt = [json.loads(ln) for ln in (pair.exports / names[2]).read_text().splitlines()]
    assert [a["question_id"] for a in mt] == list(range(24))
    a = mt[5]
    assert set(a) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert a["model_id"] == "zephyr-beta-ExPO-a0.40"
    assert a["choices"] == [{"index": 0, "turns": [gens[5]["answer"]]}]
    assert len({x["answer_id"] for x in mt}) == 24
    # stable on re-export
    again = export.write_exports(pair.root)
    assert (pair.exports / names[2]).read_text() == "".join(
        json.dumps(x, ensure_ascii=False) + "\n" for x in mt
    ) and len(again) == 4


def test_none_chosen_exports_the_baseline_only(run):
    written = export.write_exports(run.layout.pair("tulu2-7b").root)
    assert sorted(p.name for p in written) == ["model_outputs.json", "tulu2-7b-base.jsonl"]


def test_pending_pair_cannot_export(run):
    with pytest.raises(ExpoError, match="sweep.json is missing"):
        export.write_exports(run.layout.pair("pending").root)


def test_dataset_field_kept_and_string_ids():
    rows = [
        {"prompt_id": "7", "prompt": "p", "answer": "a", "dataset": "helpful_base"},
        {"prompt_id": "x-1", "prompt": "q", "answer": "b"},
    ]
    ae = export.alpaca_eval_outputs(rows, "g")
    assert ae[0]["dataset"] == "helpful_base" and "dataset" not in ae[1]
    mt = export.mt_bench_answers(rows, "g", tstamp=1.0)
    assert [m["question_id"] for m in mt] == [7, "x-1"]
    assert export.generator_name("p", 0.0) == "p-base"
    assert export.generator_name("p", 1.25) == "p-ExPO-a1.25"
