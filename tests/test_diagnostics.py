"""Delta diagnostics: per-tensor and whole-model norms of theta1 - theta0, and the warnings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from expo_batch.checkpoint import Checkpoint
from expo_batch.diagnostics import (
    HUGE_DELTA_NORMALIZED,
    LARGE_DELTA_NORMALIZED,
    DeltaTotals,
    delta_diagnostics,
    delta_warnings,
)
from expo_batch.errors import CheckpointError
from tests import tiny
from tests.test_checkpoint import save_bin, state_dict_of


def _report(sft: Path, aligned: Path):
    with Checkpoint.open(sft) as s, Checkpoint.open(aligned) as a:
        return delta_diagnostics(s, a)


def _pair_with_delta(root: Path, scale: float, n: int = 200_000) -> tuple[Path, Path]:
    """Raw fp32 checkpoints whose delta has a per-element RMS of ``scale``."""
    g = torch.Generator().manual_seed(0)
    t0 = {"a.weight": torch.randn(n // 400, 400, generator=g) * 0.02, "b.bias": torch.zeros(7)}
    t1 = {k: v + torch.randn(v.shape, generator=g) * scale for k, v in t0.items()}
    for name, sd in (("sft", t0), ("aligned", t1)):
        (root / name).mkdir()
        save_file(sd, root / name / "model.safetensors")
    return root / "sft", root / "aligned"


def test_norms_match_a_direct_computation(tiny_pair):
    report = _report(*tiny_pair)
    s, a = state_dict_of(tiny_pair[0]), state_dict_of(tiny_pair[1])
    assert [r.name for r in report.rows] == Checkpoint.open(tiny_pair[1]).names
    sq_d = sq_0 = 0.0
    for r in report.rows:
        d = a[r.name].double() - s[r.name].double()
        assert r.numel == d.numel() and r.shape == list(d.shape)
        assert r.delta_norm == pytest.approx(float(d.norm()), rel=1e-12)
        assert r.normalized == pytest.approx(float(d.norm()) / math.sqrt(d.numel()), rel=1e-12)
        assert r.relative == pytest.approx(float(d.norm() / s[r.name].double().norm()), rel=1e-12)
        assert r.changed_fraction == pytest.approx(float((d != 0).double().mean()))
        sq_d += float((d * d).sum())
        sq_0 += float((s[r.name].double() ** 2).sum())
    t = report.totals
    assert t.n_tensors == len(a)
    assert t.delta_norm == pytest.approx(math.sqrt(sq_d), rel=1e-12)
    assert t.normalized == pytest.approx(math.sqrt(sq_d / t.numel), rel=1e-12)
    assert t.relative == pytest.approx(math.sqrt(sq_d / sq_0), rel=1e-12)
    assert t.max_normalized == max(r.normalized for r in report.rows)
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["totals"]["normalized"] == t.normalized and len(d["rows"]) == len(report.rows)


def test_normal_alignment_delta_is_quiet(tmp_path):
    report = _report(*_pair_with_delta(tmp_path, 6e-6))
    assert report.totals.normalized == pytest.approx(6e-6, rel=0.05)
    assert report.warnings == []


def test_pretrained_to_sft_sized_delta_warns_with_numbers(tmp_path):
    report = _report(*_pair_with_delta(tmp_path, 2e-4))
    assert len(report.warnings) == 1
    w = report.warnings[0]
    assert "pretrained->SFT" in w and f"{report.totals.normalized:.2e}" in w
    assert "6e-06" in w and "2e-04" in w


def test_identical_models_warn(tiny_pair):
    report = _report(tiny_pair[0], tiny_pair[0])
    assert report.totals.delta_norm == 0 and report.totals.changed_fraction == 0
    assert any("identical" in w for w in report.warnings)


@pytest.mark.parametrize(
    ("normalized", "expect"),
    [
        (6e-6, None),
        (LARGE_DELTA_NORMALIZED * 1.1, "over-trained"),
        (HUGE_DELTA_NORMALIZED * 2, "pretrained->SFT"),
        (1e-10, "tiny"),
        (0.0, "identical"),
    ],
)
def test_warning_thresholds(normalized, expect):
    totals = DeltaTotals(1, 100, normalized * 10, normalized, 1.0, normalized * 10, 1.0, 0.0, None)
    warnings = delta_warnings(totals)
    if expect is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and expect in warnings[0]


def test_vocab_mismatch_uses_shared_rows(tmp_path, tiny_tokenizer):
    sft_m = tiny.build_policy(seed=12)
    al_m = tiny.perturbed(sft_m, scale=0.05, seed=13)
    al_m.resize_token_embeddings(386)
    sft = tiny.save_policy(sft_m, tiny_tokenizer, tmp_path / "sft")
    aligned = tiny.save_policy(al_m, tiny_tokenizer, tmp_path / "aligned")
    report = _report(sft, aligned)
    row = next(r for r in report.rows if r.name == "lm_head.weight")
    d = (al_m.lm_head.weight[:384].double() - sft_m.lm_head.weight.double()).detach()
    assert row.numel == 384 * 64
    assert row.delta_norm == pytest.approx(float(d.norm()), rel=1e-12)
    assert report.vocab_mismatches["lm_head.weight"] == [384, 386]
    assert any("vocabulary sizes differ" in w for w in report.warnings)


def test_missing_tensor_is_an_error(tiny_pair, tmp_path):
    sd = state_dict_of(tiny_pair[1])
    del sd["model.norm.weight"]
    (tmp_path / "a").mkdir()
    save_file(sd, tmp_path / "a" / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.norm.weight"):
        _report(tiny_pair[0], tmp_path / "a")


def test_tied_bin_against_safetensors(tmp_path, tiny_tokenizer):
    sft_m = tiny.build_policy(seed=10, tie_word_embeddings=True)
    al_m = tiny.perturbed(sft_m, scale=0.05, seed=11)
    sft = save_bin(sft_m, tmp_path / "sft")
    aligned = tiny.save_policy(al_m, tiny_tokenizer, tmp_path / "aligned")
    report = _report(sft, aligned)
    assert "lm_head.weight" not in [r.name for r in report.rows]
    assert report.totals.n_tensors == len(Checkpoint.open(aligned).names)


def test_cli_inspect(tiny_pair, capsys):
    from expo_batch.cli import main

    with pytest.raises(SystemExit) as e:
        main(["inspect", str(tiny_pair[0]), str(tiny_pair[1]), "--json"])
    assert e.value.code == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["totals"]["n_tensors"] == 21
    assert "warning" in captured.err  # the tiny pair's delta is deliberately large

    with pytest.raises(SystemExit) as e:
        main(["inspect", str(tiny_pair[0]), str(tiny_pair[1]), "--top", "3"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "total" in out and "top 3 of 21" in out

    with pytest.raises(SystemExit) as e:
        main(["inspect", str(tiny_pair[0]), "/nonexistent/model"])
    assert e.value.code == 2
    assert "is not a local folder" in capsys.readouterr().err
