"""The extrapolation engine: exactness, every checkpoint layout, refusals, atomic output, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from expo_batch.checkpoint import Checkpoint
from expo_batch.errors import CheckpointError
from expo_batch.extrapolate import (
    PROVENANCE_FILE,
    extrapolate_checkpoint,
    extrapolate_tensor,
    iter_extrapolated,
)
from tests import tiny
from tests.cli import cli
from tests.test_checkpoint import save_bin, state_dict_of

ALPHA = 0.3


def reference(t0: torch.Tensor, t1: torch.Tensor, alpha: float, dtype: torch.dtype) -> torch.Tensor:
    """The float64 reference, computed on whole tensors (a different code path)."""
    t1d = t1.double()
    return (t1d + alpha * (t1d - t0.double())).to(dtype)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Units in the last place between same-dtype float tensors (monotone integer mapping)."""
    assert a.dtype == b.dtype
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    sign = torch.iinfo(bits).min

    def ordered(x):
        i = x.contiguous().view(bits).long()
        return torch.where(i < 0, sign - i, i)

    return (ordered(a) - ordered(b)).abs()


def assert_matches_reference(sft: Path, aligned: Path, out: Path, alpha: float, dtype=None):
    s, a, o = (state_dict_of(p) for p in (sft, aligned, out))
    assert sorted(o) == sorted(a)
    total = same = 0
    for name, t1 in a.items():
        want = reference(s[name], t1, alpha, dtype or t1.dtype)
        got = o[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        d = ulp_distance(got, want)
        assert int(d.max()) <= 1, name
        total += d.numel()
        same += int((d == 0).sum())
    return same / total


def write_model(folder: Path, tensors: dict[str, torch.Tensor], like: Path | None = None) -> Path:
    """A checkpoint folder from raw tensors (config/tokenizer copied from ``like``)."""
    folder.mkdir(parents=True)
    if like is not None:
        for p in like.iterdir():
            if not p.name.endswith(".safetensors"):
                shutil.copy(p, folder / p.name)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


# ---- the pure function -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("alpha", [0.3, 2.0, -0.5, 8.0])
def test_tensor_within_one_ulp_of_float64_reference(dtype, alpha):
    g = torch.Generator().manual_seed(0)
    t0 = (torch.randn(300_000, generator=g) * 0.02).to(dtype)
    # A realistic alignment delta plus near-cancellations and exact zeros.
    t1 = (t0.double() + torch.randn(300_000, generator=g, dtype=torch.float64) * 1e-4).to(dtype)
    t1[:1000] = 0
    t0[1000:2000] = (t1[1000:2000].double() * (1 + 1 / alpha)).to(dtype)
    got = extrapolate_tensor(t0, t1, alpha)
    want = reference(t0, t1, alpha, dtype)
    d = ulp_distance(got, want)
    identical = float((d == 0).double().mean())
    print(f"{dtype} alpha={alpha}: identical {identical:.6%}, max ulp {int(d.max())}")
    assert int(d.max()) <= 1
    assert identical >= 0.999


def test_bf16_arithmetic_is_not_exact():
    """Why we compute in float64: the authors' bf16 arithmetic loses part of alpha * delta."""
    g = torch.Generator().manual_seed(1)
    t0 = (torch.randn(100_000, generator=g) * 0.02).bfloat16()
    t1 = (t0.float() + torch.randn(100_000, generator=g) * 1e-4).bfloat16()
    bf16 = t1 + ALPHA * (t1 - t0)
    exact = extrapolate_tensor(t0, t1, ALPHA)
    assert float((bf16 != exact).double().mean()) > 0.001
    assert torch.equal(exact, reference(t0, t1, ALPHA, torch.bfloat16))


def test_alpha_zero_is_bit_identical():
    t1 = torch.tensor([-0.0, 0.0, 1.5, float("-inf"), 3e-40], dtype=torch.float32)
    t0 = torch.tensor([1.0, -2.0, 1.5, 0.0, float("nan")], dtype=torch.float32)
    out = extrapolate_tensor(t0, t1, 0.0)
    assert torch.equal(out.view(torch.int32), t1.view(torch.int32))


def test_out_dtype_and_shape_checks():
    t0 = torch.zeros(4, 3)
    t1 = torch.ones(4, 3)
    out = extrapolate_tensor(t0, t1, 1.0, out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == (4, 3) and bool((out == 2).all())
    with pytest.raises(ValueError, match="shapes differ"):
        extrapolate_tensor(t0, torch.ones(3, 4), 1.0)


# ---- whole checkpoints -------------------------------------------------------------------


def test_extrapolate_tiny_pair_is_exact_and_complete(tiny_pair, tmp_path):
    sft, aligned = tiny_pair
    out = extrapolate_checkpoint(
        sft, aligned, ALPHA, tmp_path / "out", provenance={"aligned": {"revision": "abc123"}}
    )
    identical = assert_matches_reference(sft, aligned, out, ALPHA)
    print(f"fp32 tiny pair: identical to the float64 reference for {identical:.6%}")
    assert identical == 1.0
    names = {p.name for p in out.iterdir()}
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert f in names
    assert (out / "chat_template.jinja").read_text() == (
        aligned / "chat_template.jinja"
    ).read_text()
    rec = json.loads((out / PROVENANCE_FILE).read_text())
    assert rec["alpha"] == ALPHA and rec["compute_dtype"] == "float64"
    assert rec["aligned"] == {"path": str(aligned.resolve()), "revision": "abc123"}
    assert rec["sft"]["path"] == str(sft.resolve())
    assert rec["tool_version"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask
    assert all((p.stat().st_mode & 0o777) == 0o666 & ~umask for p in out.iterdir())


def test_output_loads_and_generates(tiny_pair, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = extrapolate_checkpoint(*tiny_pair, 0.5, tmp_path / "out", dtype="bf16")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "tell me a short answer"}],
        add_generation_prompt=True,
        return_dict=False,
    )
    gen = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > len(ids)
    # The in-memory weights are the file's weights.
    with Checkpoint.open(out) as c:
        assert torch.equal(model.model.embed_tokens.weight, c.get("model.embed_tokens.weight"))


def test_alpha_zero_reproduces_aligned_bit_for_bit(tiny_pair, tmp_path):
    out = extrapolate_checkpoint(*tiny_pair, 0.0, tmp_path / "out")
    a, o = state_dict_of(tiny_pair[1]), state_dict_of(out)
    for name, t in a.items():
        assert torch.equal(o[name].view(torch.int32), t.view(torch.int32)), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_pairs(tmp_path, tiny_tokenizer, dtype):
    sft_m = tiny.build_policy(seed=5, dtype=dtype)
    al_m = tiny.perturbed(sft_m, scale=0.05, seed=6)
    sft = tiny.save_policy(sft_m, tiny_tokenizer, tmp_path / "sft")
    aligned = tiny.save_policy(al_m, tiny_tokenizer, tmp_path / "aligned")
    out = extrapolate_checkpoint(sft, aligned, 2.0, tmp_path / "out")
    identical = assert_matches_reference(sft, aligned, out, 2.0)
    print(f"{dtype} pair: identical to the float64 reference for {identical:.6%}")
    assert identical >= 0.999
    assert (
        Checkpoint.open(out).specs["lm_head.weight"].dtype
        == {
            torch.bfloat16: "BF16",
            torch.float16: "F16",
        }[dtype]
    )


def test_dtype_option_rounds_once_and_updates_config(tiny_pair, tmp_path):
    out = extrapolate_checkpoint(*tiny_pair, ALPHA, tmp_path / "out", dtype="bf16")
    identical = assert_matches_reference(*tiny_pair, out, ALPHA, dtype=torch.bfloat16)
    assert identical >= 0.999
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    assert json.loads((out / PROVENANCE_FILE).read_text())["dtype"] == "bfloat16"


def test_different_shard_layouts_and_bin(tmp_path, tiny_tokenizer):
    """SFT as sharded legacy .bin, aligned as sharded safetensors with another layout."""
    sft_m = tiny.build_policy(seed=8)
    al_m = tiny.perturbed(sft_m, scale=0.05, seed=9)
    sft = save_bin(sft_m, tmp_path / "sft", shards=3)
    aligned = tiny.save_policy(al_m, tiny_tokenizer, tmp_path / "aligned", max_shard_size="150KB")
    n_aligned = len(Checkpoint.open(aligned).files)
    out = extrapolate_checkpoint(sft, aligned, ALPHA, tmp_path / "out")
    assert assert_matches_reference(sft, aligned, out, ALPHA) == 1.0
    # Shard size policy: the aligned model's largest shard.
    largest = Checkpoint.open(aligned).largest_shard_bytes
    shards = Checkpoint.open(out).files
    assert len(shards) == n_aligned
    assert all(p.stat().st_size <= largest + 4096 for p in shards)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(Checkpoint.open(aligned).names)
    # Told otherwise: one shard, no index.
    one = extrapolate_checkpoint(sft, aligned, ALPHA, tmp_path / "one", max_shard_size="1GB")
    assert sorted(p.name for p in one.glob("model*")) == ["model.safetensors"]
    # And legacy .bin as the aligned model.
    out2 = extrapolate_checkpoint(
        aligned, save_bin(al_m, tmp_path / "al_bin"), 1.0, tmp_path / "o2"
    )
    assert assert_matches_reference(aligned, tmp_path / "al_bin", out2, 1.0) == 1.0


def test_tied_embeddings_stay_tied(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    sft_m = tiny.build_policy(seed=10, tie_word_embeddings=True)
    al_m = tiny.perturbed(sft_m, scale=0.05, seed=11)
    sft = tiny.save_policy(sft_m, tiny_tokenizer, tmp_path / "sft")
    aligned = tiny.save_policy(al_m, tiny_tokenizer, tmp_path / "aligned")
    assert "lm_head.weight" not in Checkpoint.open(aligned).names
    out = extrapolate_checkpoint(sft, aligned, ALPHA, tmp_path / "out")
    assert "lm_head.weight" not in Checkpoint.open(out).names
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    want = reference(
        sft_m.model.embed_tokens.weight, al_m.model.embed_tokens.weight, ALPHA, torch.float32
    )
    assert torch.equal(model.lm_head.weight, want)

    # Legacy .bin with both names sharing storage: written once, as transformers does.
    sft_bin = save_bin(sft_m, tmp_path / "sft_bin")
    al_bin = save_bin(al_m, tmp_path / "al_bin")
    shutil.copy(aligned / "tokenizer.json", al_bin)
    out_bin = extrapolate_checkpoint(sft_bin, al_bin, ALPHA, tmp_path / "out_bin")
    assert sorted(Checkpoint.open(out_bin).names) == sorted(Checkpoint.open(out).names)
    for name, t in state_dict_of(out).items():
        assert torch.equal(state_dict_of(out_bin)[name], t)
    rec = json.loads((out_bin / PROVENANCE_FILE).read_text())
    assert rec["tied_aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    # A .bin SFT (tied) against an aligned safetensors that stores lm_head separately: fine.
    untied = tmp_path / "untied"
    sd = dict(state_dict_of(aligned))
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    write_model(untied, sd, like=aligned)
    out3 = extrapolate_checkpoint(sft_bin, untied, ALPHA, tmp_path / "out3")
    assert torch.equal(state_dict_of(out3)["lm_head.weight"], want)


def test_buffers_and_non_float_tensors(tiny_pair, tmp_path):
    sft, aligned = tiny_pair
    extra = {"model.position_ids": torch.arange(16), "model.mask": torch.tensor([True, False])}
    s = write_model(tmp_path / "s", {**state_dict_of(sft), **extra}, like=sft)
    a = write_model(tmp_path / "a", {**state_dict_of(aligned), **extra}, like=aligned)
    out = extrapolate_checkpoint(s, a, ALPHA, tmp_path / "out")
    got = state_dict_of(out)
    assert torch.equal(got["model.position_ids"], extra["model.position_ids"])
    assert got["model.position_ids"].dtype == torch.int64
    assert torch.equal(got["model.mask"], extra["model.mask"])

    bad = {**extra, "model.position_ids": torch.arange(16).flip(0)}
    a2 = write_model(tmp_path / "a2", {**state_dict_of(aligned), **bad}, like=aligned)
    with pytest.raises(CheckpointError, match="model.position_ids") as e:
        extrapolate_checkpoint(s, a2, ALPHA, tmp_path / "out2")
    assert "model.mask" not in str(e.value)
    assert not (tmp_path / "out2").exists()


def _no_output(tmp_path: Path, name: str) -> None:
    assert not (tmp_path / name).exists()
    assert not list(tmp_path.glob(f".{name}*")), "a temporary folder was left behind"


def test_missing_tensor_and_shape_mismatch_fail_before_writing(tiny_pair, tmp_path):
    sft, aligned = tiny_pair
    sd = state_dict_of(aligned)
    del sd["model.layers.1.mlp.down_proj.weight"]
    a = write_model(tmp_path / "a", sd, like=aligned)
    with pytest.raises(
        CheckpointError, match=r"model\.layers\.1\.mlp\.down_proj\.weight.*\[64, 128\]"
    ):
        extrapolate_checkpoint(sft, a, ALPHA, tmp_path / "out")
    _no_output(tmp_path, "out")

    sd = state_dict_of(aligned)
    sd["model.norm.weight"] = torch.ones(65)
    a = write_model(tmp_path / "b", sd, like=aligned)
    with pytest.raises(CheckpointError, match=r"'model.norm.weight' has shape \[64\].*\[65\]"):
        extrapolate_checkpoint(sft, a, ALPHA, tmp_path / "out")
    _no_output(tmp_path, "out")


def _vocab_pair(tmp_path: Path, tiny_tokenizer) -> tuple[Path, Path, dict, dict]:
    """SFT with 384 rows, aligned with 386 (two added tokens), other weights a delta apart."""
    sft_m = tiny.build_policy(seed=12)
    al_m = tiny.perturbed(sft_m, scale=0.05, seed=13)
    al_m.resize_token_embeddings(386)
    sft = tiny.save_policy(sft_m, tiny_tokenizer, tmp_path / "sft")
    aligned = tiny.save_policy(al_m, tiny_tokenizer, tmp_path / "aligned")
    return sft, aligned, state_dict_of(sft), state_dict_of(aligned)


def test_vocab_mismatch_needs_the_policy(tmp_path, tiny_tokenizer):
    sft, aligned, s, a = _vocab_pair(tmp_path, tiny_tokenizer)
    with pytest.raises(CheckpointError, match="vocabulary size differs") as e:
        extrapolate_checkpoint(sft, aligned, ALPHA, tmp_path / "out")
    assert "384 vs 386 rows" in str(e.value) and "copy-extra" in str(e.value)
    _no_output(tmp_path, "out")

    out = extrapolate_checkpoint(sft, aligned, ALPHA, tmp_path / "out", vocab_policy="copy-extra")
    o = state_dict_of(out)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert o[name].shape == (386, 64)
        assert torch.equal(o[name][:384], reference(s[name], a[name][:384], ALPHA, torch.float32))
        assert torch.equal(o[name][384:], a[name][384:])
    rec = json.loads((out / PROVENANCE_FILE).read_text())
    assert rec["vocab_extra_rows"]["lm_head.weight"] == [384, 386]
    # The other way round (SFT larger) cannot be filled.
    with pytest.raises(CheckpointError, match="more rows"):
        extrapolate_checkpoint(aligned, sft, ALPHA, tmp_path / "o2", vocab_policy="copy-extra")


def test_nan_in_output_names_the_tensor(tiny_pair, tmp_path):
    sft, aligned = tiny_pair
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("previous complete output")
    sd = state_dict_of(aligned)
    sd["model.layers.0.self_attn.o_proj.weight"][3, 5] = float("nan")
    a = write_model(tmp_path / "a", sd, like=aligned)
    with pytest.raises(CheckpointError, match=r"NaN/Inf.*model.layers.0.self_attn.o_proj.weight"):
        extrapolate_checkpoint(sft, a, ALPHA, tmp_path / "out")
    assert (tmp_path / "out" / "old.txt").exists()  # the previous output is untouched
    assert not list(tmp_path.glob(".out*"))
    # Overflow when rounding to a narrower dtype is caught too.
    sd = state_dict_of(aligned)
    sd["model.norm.weight"][0] = 60000.0
    a = write_model(tmp_path / "b", sd, like=aligned)
    with pytest.raises(CheckpointError, match="model.norm.weight"):
        extrapolate_checkpoint(sft, a, 1.0, tmp_path / "o16", dtype="fp16")


def test_interrupted_write_never_looks_finished(tiny_pair, tmp_path, monkeypatch):
    from expo_batch import checkpoint

    sft, aligned = tiny_pair
    extrapolate_checkpoint(sft, aligned, 0.1, tmp_path / "out")
    calls = {"n": 0}
    real_write = checkpoint.PlannedShardWriter.write

    def flaky(self, name, chunk):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_write(self, name, chunk)

    monkeypatch.setattr(checkpoint.PlannedShardWriter, "write", flaky)
    with pytest.raises(KeyboardInterrupt):
        extrapolate_checkpoint(sft, aligned, 0.5, tmp_path / "out")
    rec = json.loads((tmp_path / "out" / PROVENANCE_FILE).read_text())
    assert rec["alpha"] == 0.1  # still the earlier, complete output
    assert not list(tmp_path.glob(".out*"))


def test_killed_process_leaves_nothing_that_looks_finished(tiny_pair, tmp_path):
    """A hard kill (no cleanup at all) mid-write: only a hidden temp folder remains."""
    sft, aligned = tiny_pair
    script = f"""
import os
from expo_batch import checkpoint
from expo_batch.extrapolate import extrapolate_checkpoint
real = checkpoint.PlannedShardWriter.write
n = [0]
def write(self, name, chunk):
    n[0] += 1
    if n[0] == 4:
        os._exit(9)
    return real(self, name, chunk)
checkpoint.PlannedShardWriter.write = write
extrapolate_checkpoint({str(sft)!r}, {str(aligned)!r}, 0.3, {str(tmp_path / "out")!r})
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1])
    assert r.returncode == 9
    assert not (tmp_path / "out").exists()
    stale = list(tmp_path.glob(".out.tmp-*"))
    assert stale and any(p.suffix == ".safetensors" for p in stale[0].iterdir())
    extrapolate_checkpoint(sft, aligned, 0.3, tmp_path / "out")
    assert (tmp_path / "out" / PROVENANCE_FILE).exists()
    assert not list(tmp_path.glob(".out*"))


def test_output_folder_may_not_be_an_input(tiny_pair):
    with pytest.raises(CheckpointError, match="is an input folder"):
        extrapolate_checkpoint(*tiny_pair, ALPHA, tiny_pair[1])


def test_remote_code_files_are_copied(tiny_pair, tmp_path):
    aligned = tmp_path / "aligned"
    shutil.copytree(tiny_pair[1], aligned)
    (aligned / "modeling_custom.py").write_text("# remote code\n")
    (aligned / "README.md").write_text("the aligned model's card\n")
    (aligned / "additional_chat_templates").mkdir()
    (aligned / "additional_chat_templates" / "tool_use.jinja").write_text("{{ x }}")
    (aligned / "original").mkdir()
    (aligned / "original" / "consolidated.00.pth").write_bytes(b"weights")
    out = extrapolate_checkpoint(
        tiny_pair[0], aligned, ALPHA, tmp_path / "out", trust_remote_code=True
    )
    assert (out / "modeling_custom.py").read_text() == "# remote code\n"
    assert (out / "additional_chat_templates" / "tool_use.jinja").exists()
    assert not (out / "README.md").exists() and not (out / "original").exists()
    assert json.loads((out / PROVENANCE_FILE).read_text())["trust_remote_code"] is True


# ---- the iterator ------------------------------------------------------------------------


def test_iter_extrapolated_matches_file_and_writes_nothing(tiny_pair, tmp_path):
    sft, aligned = tiny_pair
    before = {p: p.stat().st_mtime_ns for d in tiny_pair for p in d.iterdir()}
    with Checkpoint.open(sft) as s, Checkpoint.open(aligned) as a:
        got = list(iter_extrapolated(s, a, ALPHA, out_dtype=torch.bfloat16))
        assert [n for n, _ in got] == a.names
    assert before == {p: p.stat().st_mtime_ns for d in tiny_pair for p in d.iterdir()}
    out = extrapolate_checkpoint(sft, aligned, ALPHA, tmp_path / "out", dtype="bf16")
    o = state_dict_of(out)
    for name, t in got:
        assert torch.equal(t, o[name]), name
    # Tensors are independent (not views of a reused buffer).
    assert len({t.data_ptr() for _, t in got}) == len(got)


def test_iter_extrapolated_checks_the_pair_first(tiny_pair, tmp_path):
    sd = state_dict_of(tiny_pair[1])
    sd["model.norm.weight"] = torch.ones(65)
    a = write_model(tmp_path / "a", sd, like=tiny_pair[1])
    with Checkpoint.open(tiny_pair[0]) as s, Checkpoint.open(a) as al:
        it = iter_extrapolated(s, al, ALPHA)
        with pytest.raises(CheckpointError, match="model.norm.weight"):
            next(it)


# ---- CLI ---------------------------------------------------------------------------------


def test_cli_extrapolate(tiny_pair, tmp_path, capsys):
    sft, aligned = map(str, tiny_pair)
    out = tmp_path / "out"
    code = cli(
        "extrapolate", sft, aligned, "--alpha", "-0.5", "--output", str(out), "--dtype", "fp16"
    )
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert json.loads((out / PROVENANCE_FILE).read_text())["alpha"] == -0.5
    assert Checkpoint.open(out).specs["lm_head.weight"].dtype == "F16"

    code = cli(
        "extrapolate", sft, str(tmp_path / "nope"), "--alpha", "1", "-o", str(tmp_path / "x")
    )
    assert code == 2
    assert "is not a local folder" in capsys.readouterr().err

    code = cli(
        "extrapolate", sft, aligned, "--alpha", "1", "-o", str(tmp_path / "x"), "--dtype", "int4"
    )
    assert code == 2 and "--dtype" in capsys.readouterr().err

    code = cli(
        "extrapolate",
        sft,
        aligned,
        "--alpha",
        "1",
        "-o",
        str(tmp_path / "x"),
        "--max-shard-size",
        "big",
    )
    assert code == 2 and "--max-shard-size" in capsys.readouterr().err


def test_cli_extrapolate_incompatible_pair(tmp_path, tiny_tokenizer, capsys):
    sft, aligned, _, _ = _vocab_pair(tmp_path, tiny_tokenizer)
    code = cli("extrapolate", str(sft), str(aligned), "--alpha", "0.3", "-o", str(tmp_path / "o"))
    assert code == 1
    err = capsys.readouterr().err
    assert "vocabulary size differs" in err and "--vocab-policy copy-extra" in err
    assert "Traceback" not in err
    code = cli("extrapolate", str(sft), str(aligned), "--alpha", "0.3", "-o", str(tmp_path / "o"),
         "--vocab-policy", "copy-extra", "--no-progress")  # fmt: skip
    assert code == 0


def test_cli_subprocess_help_is_fast_to_import():
    r = subprocess.run(
        [sys.executable, "-c", "import sys, expo_batch.cli; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert r.stdout.strip() == "False", "the CLI imports torch at startup"
