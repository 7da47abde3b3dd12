"""The commands over Hub refs, against the local stand-in server: plan's preflight, and
extrapolate / inspect taking `org/name@revision`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import hubserver, tiny
from tests.cli import cli

hub_env = hubserver.hub_env
fake_hub = hubserver.fake_hub


@pytest.fixture
def served(fake_hub, tiny_pair, tiny_tokenizer, tmp_path):
    sft, aligned = tiny_pair
    wide = tiny.save_policy(
        tiny.build_policy(seed=2, intermediate_size=96), tiny_tokenizer, tmp_path / "wide"
    )
    return {
        "sft": fake_hub.add_repo("org/sft", sft),
        "aligned": fake_hub.add_repo("org/aligned", aligned),
        "wide": fake_hub.add_repo("org/wide", wide),
    }


def write_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "hub.yaml"
    path.write_text(
        "defaults:\n  prompts: {path: p.jsonl}\n  scorer: {function: m:f}\n"
        "pairs:\n"
        "  - name: good\n    sft: org/sft\n    aligned: org/aligned@main\n"
        "  - name: wide\n    sft: org/sft\n    aligned: org/wide\n"
        "  - name: missing\n    sft: org/sft\n    aligned: org/nothing-here\n"
    )
    return path


def test_plan_preflight_prints_sizes_and_compatibility(
    served, fake_hub, tmp_path, capsys, monkeypatch
):
    from expo_batch.console import out

    monkeypatch.setattr(out, "width", 400)  # keep each row on one line
    code = cli("plan", str(write_manifest(tmp_path)), "--output", str(tmp_path / "out"))
    out = capsys.readouterr()
    assert code == 1  # two of the three pairs cannot run
    text = out.out
    assert "compatible (21 tensors)" in text
    assert f"aligned@{served['aligned'][:10]}" in text
    assert "1.5 MB needed" in text and "1.0 MB" in text  # both checkpoints + one output
    assert "has shape [128, 64] in the SFT model and [96, 64]" in text
    assert "org/nothing-here" in text and "hub.yaml:11 pair 'missing' field 'aligned'" in text
    assert "Traceback" not in out.err
    # headers only: no weight file was downloaded whole
    assert all(r.range for r in fake_hub.weight_requests())


def test_extrapolate_and_inspect_take_hub_refs(served, tmp_path, capsys):
    out_dir = tmp_path / "expo"
    code = cli("extrapolate", "org/sft", f"org/aligned@{served['aligned']}", "--alpha", "0.5",
               "--output", str(out_dir), "--no-progress")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    prov = json.loads((out_dir / "expo_provenance.json").read_text())
    assert prov["aligned"]["sha"] == served["aligned"]
    assert prov["sft"]["sha"] == served["sft"]
    assert (out_dir / "model.safetensors").exists()
    capsys.readouterr()
    assert cli("inspect", "org/sft", "org/aligned", "--json") == 0
    assert json.loads(capsys.readouterr().out)["totals"]["n_tensors"] == 21


def test_extrapolate_refuses_incompatible_hub_pair_before_download(
    served, fake_hub, tmp_path, capsys
):
    code = cli(
        "extrapolate", "org/sft", "org/wide", "--alpha", "0.5", "--output", str(tmp_path / "x")
    )
    err = capsys.readouterr().err
    assert code == 1 and "cannot be extrapolated" in err
    assert all(r.range for r in fake_hub.weight_requests())
    assert not (tmp_path / "x").exists()
