"""Prompt sets: local files, split file choice, hashing, chat-template rendering and the BOS rule.

Hub datasets are tested against the local Hub stand-in in tests/test_prompts_hub.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expo_batch.errors import ScoringError
from expo_batch.manifest import PromptsConfig
from expo_batch.prompts import (
    load_policy_tokenizer,
    load_prompts,
    render_prompt_ids,
    split_files,
)
from tests import tiny


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_local_jsonl_fields_ids_limit_and_hash(tmp_path):
    rows = [
        {"id": "a", "prompt": "first"},
        {"instruction": "second (alpaca)"},
        {"messages": [{"role": "user", "content": "third"}, {"role": "assistant", "content": "x"}]},
        {"prompt_id": 17, "prompt": "fourth"},
    ]
    ps = load_prompts(PromptsConfig(path=_write_jsonl(tmp_path / "p.jsonl", rows)))
    assert [(p.id, p.text) for p in ps] == [
        ("a", "first"),
        ("1", "second (alpaca)"),
        ("2", "third"),
        ("17", "fourth"),
    ]
    assert ps.source["kind"] == "file" and len(ps.hash) == 64

    limited = load_prompts(PromptsConfig(path=tmp_path / "p.jsonl", limit=2))
    assert len(limited) == 2 and limited.hash != ps.hash

    rows[0]["prompt"] = "first!"
    changed = load_prompts(PromptsConfig(path=_write_jsonl(tmp_path / "q.jsonl", rows)))
    assert changed.hash != ps.hash
    same = load_prompts(PromptsConfig(path=_write_jsonl(tmp_path / "r.jsonl", rows)))
    assert same.hash == changed.hash  # the hash is of ids and texts, not of the file name


def test_local_json_list_and_errors(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "x"}, {"prompt": "y"}]))
    assert load_prompts(PromptsConfig(path=tmp_path / "p.json")).texts == ["x", "y"]

    _write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}])
    with pytest.raises(ScoringError, match="appears twice"):
        load_prompts(PromptsConfig(path=tmp_path / "dup.jsonl"))
    _write_jsonl(tmp_path / "bad.jsonl", [{"text": "a"}])
    with pytest.raises(ScoringError, match="no prompt found"):
        load_prompts(PromptsConfig(path=tmp_path / "bad.jsonl"))
    with pytest.raises(ScoringError, match="does not exist"):
        load_prompts(PromptsConfig(path=tmp_path / "missing.jsonl"))


def test_split_files_prefers_the_split_parquet():
    files = [
        "README.md",
        "data/train_prefs-00000-of-00001.parquet",
        "data/test_gen-00000-of-00001.parquet",
        "data/test_gen_extra.json",
        "test_prefs.jsonl",
    ]
    assert split_files(files, "test_gen") == ["data/test_gen-00000-of-00001.parquet"]
    assert split_files(files, "test_prefs") == ["test_prefs.jsonl"]
    assert split_files(files, "nope") == []


def test_render_uses_the_policy_template_with_one_bos(tiny_tokenizer):
    ids = render_prompt_ids(tiny_tokenizer, "tell me a short answer")
    expected = tiny_tokenizer(
        "<s><|user|>\ntell me a short answer</s>\n<|assistant|>\n", add_special_tokens=False
    )["input_ids"]
    assert ids == expected
    assert ids[0] == tiny_tokenizer.bos_token_id and ids.count(tiny_tokenizer.bos_token_id) == 1


def test_double_bos_is_collapsed_and_missing_bos_added():
    from tokenizers import processors

    double = tiny.build_tokenizer("{{ bos_token }}" + tiny.CHAT_TEMPLATE)
    ids = render_prompt_ids(double, "hi")
    assert ids[0] == double.bos_token_id and ids[1] != double.bos_token_id

    # A tokenizer that adds BOS itself, with a template that does not: exactly one BOS.
    adds = tiny.build_tokenizer(tiny.CHAT_TEMPLATE.replace("{{ bos_token }}", ""))
    adds._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    assert adds("a")["input_ids"][0] == 1
    ids = render_prompt_ids(adds, "hi")
    assert ids[0] == 1 and ids.count(1) == 1


def test_model_without_chat_template_is_refused(tmp_path):
    folder = tmp_path / "no-template-model"
    tiny.build_tokenizer(chat_template=None).save_pretrained(folder)
    tok = load_policy_tokenizer(folder)
    with pytest.raises(ScoringError, match="no-template-model.*no chat template"):
        render_prompt_ids(tok, "hi")


@pytest.mark.network
def test_ultrafeedback_test_gen_from_the_hub():
    """The real Hub: file naming and parquet schema of the paper's prompt set. The same code path
    runs offline against the local stand-in in tests/test_prompts_hub.py."""
    pytest.importorskip("pyarrow")
    ps = load_prompts(
        PromptsConfig(dataset="HuggingFaceH4/ultrafeedback_binarized", split="test_gen", limit=3)
    )
    assert len(ps) == 3 and all(p.text for p in ps)
    assert len(ps.source["revision"]) == 40 and ps.source["files"] == [
        "data/test_gen-00000-of-00001.parquet"
    ]
