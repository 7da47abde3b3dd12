"""The manifest: the shipped registry validates; broken manifests name file:line and the field."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from expo_batch.errors import ManifestError, UsageError
from expo_batch.manifest import load_manifest, select_pairs

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
defaults:
  alphas: [0.1, 0.3]
  prompts: {path: prompts.jsonl, limit: 4}
  scorer: {model: ./rm, batch_size: 2}
pairs:
  - name: a
    sft: org/sft
    aligned: org/aligned@v1
    tags: [x]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "registry.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_shipped_registry_has_all_paper_pairs():
    m = load_manifest(ROOT / "registry.yaml")
    names = [p.name for p in m.pairs]
    assert len(names) == 27
    for must in (
        "zephyr-7b-alpha",
        "tulu2-70b",
        "internlm2-20b",
        "zephyr-7b-dpo-full",
        "mistral-base-rdpo",
        "llama3-base-simpo",
    ):
        assert must in names
    by = {p.name: p for p in m.pairs}
    assert by["internlm2-7b"].spec.trust_remote_code
    assert by["internlm2-7b"].spec.stop_token_ids == (92542,)
    assert by["llama3-8b-iter"].spec.stop_token_ids == (128001, 128009)
    assert by["mistral-base-rdpo"].aligned.repo_id == "princeton-nlp/Mistral-7B-Base-SFT-RDPO"
    assert by["llama3-base-rrhf"].aligned.repo_id == "princeton-nlp/Llama-3-Base-8B-SFT-RRHF"
    assert not by["zephyr-7b-beta"].spec.trust_remote_code
    s = by["zephyr-7b-beta"].settings
    assert (s.sampling.temperature, s.sampling.top_p, s.sampling.top_k) == (0.7, 0.9, 50)
    assert s.sampling.seed == 42 and s.sampling.max_tokens == 2048
    assert s.prompts.split == "test_gen" and s.scorer.model == "weqweasdas/RM-Mistral-7B"
    assert sum("simpo" in p.spec.tags for p in m.pairs) == 14


def test_good_manifest_resolves_paths_and_defaults(tmp_path):
    m = load_manifest(write(tmp_path, GOOD))
    (pair,) = m.pairs
    assert pair.settings.alphas == (0.1, 0.3)
    assert pair.settings.prompts.path == tmp_path / "prompts.jsonl"
    assert pair.settings.scorer.model == str(tmp_path / "rm")
    assert pair.aligned.repo_id == "org/aligned" and pair.aligned.revision == "v1"
    assert pair.line == 6


def test_pair_overrides_merge_nested_tables(tmp_path):
    text = GOOD.replace(
        "    tags: [x]\n", "    tags: [x]\n    sampling: {max_tokens: 7}\n    alphas: [2, 4]\n"
    )
    (pair,) = load_manifest(write(tmp_path, text)).pairs
    assert pair.settings.sampling.max_tokens == 7
    assert pair.settings.sampling.temperature == 0.7
    assert pair.settings.alphas == (2.0, 4.0)


BROKEN = [
    ("bad yaml", "defaults:\n  alphas: [0.1\npairs: []\n", 3, "invalid YAML"),
    (
        "unknown key",
        GOOD.replace("    tags: [x]", "    tagz: [x]"),
        9,
        "unknown key 'tagz' (did you mean 'tags'?)",
    ),
    (
        "unknown nested key",
        GOOD.replace("batch_size: 2", "batch_sise: 2"),
        4,
        "did you mean 'batch_size'",
    ),
    ("wrong type", GOOD.replace("alphas: [0.1, 0.3]", "alphas: fast"), 2, "defaults.alphas"),
    (
        "duplicate name",
        GOOD + "  - name: a\n    sft: org/s\n    aligned: org/t\n",
        10,
        "duplicate pair name 'a' (first used on line 6)",
    ),
    (
        "bad model reference",
        GOOD.replace("org/aligned@v1", "not a ref"),
        8,
        "pairs[0].aligned: 'not a ref' is not a model reference",
    ),
    ("empty grid", GOOD.replace("alphas: [0.1, 0.3]", "alphas: []"), 2, "alpha grid is empty"),
    (
        "negative batch size",
        GOOD.replace("batch_size: 2", "batch_size: -4"),
        4,
        "defaults.scorer.batch_size: Input should be greater than or equal to 1",
    ),
    (
        "missing required field",
        GOOD.replace("    sft: org/sft\n", ""),
        6,
        "pairs[0].sft: required field is missing",
    ),
    ("alpha at -1", GOOD.replace("alphas: [0.1, 0.3]", "alphas: [-1, 0.3]"), 2, "greater than -1"),
    ("unsafe pair name", GOOD.replace("name: a", "name: ../x"), 6, "not a safe folder name"),
    (
        "two prompt sources",
        GOOD.replace("{path: prompts.jsonl, limit: 4}", "{path: p.jsonl, dataset: org/d}"),
        3,
        "exactly one of 'dataset'",
    ),
    (
        "bad scorer function",
        GOOD.replace("{model: ./rm, batch_size: 2}", "{function: nocolon}"),
        4,
        "module:function",
    ),
    ("top level not a mapping", "- a\n- b\n", 1, "must be a mapping"),
    ("no pairs key", "defaults: {}\n", 1, "pairs: required field is missing"),
]


@pytest.mark.parametrize("case,text,line,needle", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_manifest_names_line_and_field(tmp_path, case, text, line, needle):
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    msg = str(info.value)
    assert needle in msg, msg
    assert f"registry.yaml:{line} " in msg, msg


def test_all_problems_reported_at_once(tmp_path):
    text = GOOD.replace("batch_size: 2", "batch_size: 0").replace("tags: [x]", "tagz: [x]")
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, text))
    assert len(info.value.problems) == 2


def test_select_by_name_glob_and_tag():
    m = load_manifest(ROOT / "registry.yaml")
    assert [p.name for p in select_pairs(m.pairs, ["tulu2-*"])] == [
        "tulu2-7b",
        "tulu2-13b",
        "tulu2-70b",
    ]
    assert len(select_pairs(m.pairs, ["simpo"])) == 14
    assert [p.name for p in select_pairs(m.pairs, ["zephyr-7b-beta,internlm2-7b"])] == [
        "zephyr-7b-beta",
        "internlm2-7b",
    ]
    with pytest.raises(UsageError, match="did you mean 'tulu2-7b'"):
        select_pairs(m.pairs, ["tulu2-7"])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "expo_batch", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )


def test_cli_validate_lists_pairs():
    r = run_cli("validate", "registry.yaml", "--only", "internlm2-*")
    assert r.returncode == 0, r.stderr
    assert "internlm2-1.8b" in r.stdout and "3 of 27 pairs" in r.stdout


def test_cli_broken_manifest_exit_2_without_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("tags: [x]", "tagz: [x]"))
    r = run_cli("validate", str(path))
    assert r.returncode == 2
    assert "registry.yaml:9 pairs[0].tagz: unknown key 'tagz'" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_cli_missing_manifest_and_bad_only(tmp_path):
    r = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "manifest not found" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("validate", "registry.yaml", "--only", "nothing-like-this")
    assert r.returncode == 2 and "matches no pair" in r.stderr
