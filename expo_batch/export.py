"""Answers in the formats the official judges read: AlpacaEval and FastChat's MT-Bench.

expo-batch never calls a paid API (no GPT-4 judge, no OpenAI key). These exports are inputs for
the official judges, which users run themselves when they have the benchmark's prompts and an
API key::

    alpaca_eval --model_outputs exports/alpaca_eval/<pair>-ExPO-a0.30/model_outputs.json
    # FastChat: copy exports/mt_bench/model_answer/*.jsonl into data/mt_bench/model_answer/,
    # then python gen_judgment.py --model-list <pair>-ExPO-a0.30 <pair>-base

For a judge to score them, the run's prompts must be the benchmark's own prompts (e.g. a local
prompt file holding AlpacaEval's 805 instructions, or MT-Bench's questions with their
``question_id`` as ``prompt_id``). MT-Bench questions have two turns; expo-batch generates one
answer per prompt, so the MT-Bench export holds first-turn answers only (``turns`` has one item),
which FastChat's single-answer grading of turn 1 accepts and its turn-2 grading does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from expo_batch.errors import ExpoError
from expo_batch.io import atomic_write_json, atomic_write_text, read_json, read_jsonl
from expo_batch.layout import PairLayout, alpha_label


def generator_name(pair: str, alpha: float) -> str:
    """``<pair>-ExPO-a0.30`` for an extrapolated candidate, ``<pair>-base`` for alpha 0."""
    return f"{pair}-base" if float(alpha) == 0.0 else f"{pair}-ExPO-a{alpha_label(alpha)}"


def alpaca_eval_outputs(rows: list[dict[str, Any]], generator: str) -> list[dict[str, Any]]:
    """AlpacaEval's model_outputs.json records: instruction, output, generator (+ dataset if known).

    ``dataset`` is only written when the prompt record carried one (AlpacaEval's own subsets such
    as ``helpful_base``); a made-up value would break AlpacaEval's merge with its references.
    """
    out = []
    for r in rows:
        rec = {"instruction": r["prompt"], "output": r["answer"], "generator": generator}
        if r.get("dataset"):
            rec["dataset"] = r["dataset"]
        out.append(rec)
    return out


def _question_id(prompt_id: Any) -> Any:
    # MT-Bench question ids are integers (81..160); keep ours as ints when they are.
    if isinstance(prompt_id, str) and prompt_id.isdigit():
        return int(prompt_id)
    return prompt_id


def mt_bench_answers(
    rows: list[dict[str, Any]], model_id: str, tstamp: float
) -> list[dict[str, Any]]:
    """FastChat model_answer records, one per prompt, sorted by question id as FastChat does.

    ``answer_id`` is derived from the model id and question id (stable across re-exports) rather
    than FastChat's random shortuuid.
    """
    out = []
    for r in rows:
        qid = _question_id(r["prompt_id"])
        aid = hashlib.sha256(f"{model_id}\0{qid}".encode()).hexdigest()[:22]
        out.append(
            {
                "question_id": qid,
                "answer_id": aid,
                "model_id": model_id,
                "choices": [{"index": 0, "turns": [r["answer"]]}],
                "tstamp": tstamp,
            }
        )
    return sorted(out, key=lambda a: (isinstance(a["question_id"], str), a["question_id"]))


def write_exports(pair_dir: Path) -> list[Path]:
    """Write the chosen alpha's and the baseline's answers under ``pair_dir/exports/``.

    Layout (mirrors where each tool looks for them)::

        exports/alpaca_eval/<generator>/model_outputs.json
        exports/mt_bench/model_answer/<generator>.jsonl

    With no chosen alpha, only the baseline is exported. Returns the files written.

    Raises:
        ExpoError: no sweep.json, or a candidate's generations.jsonl is missing.
    """
    layout = PairLayout(Path(pair_dir))
    try:
        sweep = read_json(layout.sweep)
    except FileNotFoundError:
        raise ExpoError(
            f"cannot export answers: {layout.sweep} is missing",
            "the pair's sweep has not finished yet",
        ) from None
    pair = sweep.get("pair") or layout.root.name
    chosen = (sweep.get("selection") or {}).get("chosen_alpha")
    alphas = [0.0] + ([float(chosen)] if chosen is not None else [])
    written: list[Path] = []
    for alpha in alphas:
        gens = layout.candidate(alpha).generations
        rows = read_jsonl(gens)
        if not rows:
            raise ExpoError(f"cannot export answers: {gens} is missing or empty")
        name = generator_name(pair, alpha)
        ae = layout.exports / "alpaca_eval" / name / "model_outputs.json"
        atomic_write_json(ae, alpaca_eval_outputs(rows, name))
        mt = layout.exports / "mt_bench" / "model_answer" / f"{name}.jsonl"

        answers = mt_bench_answers(rows, name, tstamp=round(os.path.getmtime(gens), 3))
        atomic_write_text(mt, "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in answers))
        written += [ae, mt]
    return written
