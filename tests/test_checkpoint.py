"""Checkpoint reading (safetensors, sharded, legacy .bin) and the sharded safetensors writers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from expo_batch.checkpoint import (
    Checkpoint,
    PlannedShardWriter,
    ShardedWriter,
    parse_size,
    plan_shards,
)
from expo_batch.compat import TensorSpec
from expo_batch.errors import CheckpointError
from tests import tiny

# ---- helpers shared with the other checkpoint tests ----------------------------------------


def state_dict_of(folder: Path) -> dict[str, torch.Tensor]:
    with Checkpoint.open(folder) as c:
        return {n: c.get(n) for n in c.names}


def save_bin(model, folder: Path, shards: int = 1) -> Path:
    """A legacy checkpoint: torch.save state dict(s), with pytorch_model.bin.index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    sd = model.state_dict()
    if shards == 1:
        torch.save(sd, folder / "pytorch_model.bin")
        return folder
    names = list(sd)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: sd[k] for k in names[i * per : (i + 1) * per]}
        torch.save(part, folder / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return folder


@pytest.fixture(scope="module")
def policy():
    return tiny.build_policy(seed=3)


def _expected(model) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


# ---- reading -----------------------------------------------------------------------------


def test_single_safetensors(tiny_pair):
    _, aligned = tiny_pair
    with Checkpoint.open(aligned) as c:
        assert c.format == "safetensors"
        assert c.folder == aligned
        assert "model.embed_tokens.weight" in c.names
        spec = c.specs["model.embed_tokens.weight"]
        assert spec == TensorSpec((384, 64), "F32")
        assert c.config["vocab_size"] == 384
        assert c.shard_of("lm_head.weight").name == "model.safetensors"
        assert c.total_bytes == sum(s.numel * 4 for s in c.specs.values())
        with safe_open(aligned / "model.safetensors", "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                assert torch.equal(c.get(name), f.get_tensor(name)), name


def test_sharded_safetensors_equals_single(tmp_path, policy, tiny_tokenizer):
    tiny.save_policy(policy, tiny_tokenizer, tmp_path / "one")
    tiny.save_policy(policy, tiny_tokenizer, tmp_path / "many", max_shard_size="100KB")
    many = Checkpoint.open(tmp_path / "many")
    assert len(many.files) > 2 and (tmp_path / "many/model.safetensors.index.json").exists()
    one = state_dict_of(tmp_path / "one")
    assert sorted(many.names) == sorted(one)
    for name in one:
        assert torch.equal(many.get(name), one[name])
    assert {many.shard_of(n).name for n in many.names} == {p.name for p in many.files}
    many.close()


@pytest.mark.parametrize("shards", [1, 3])
def test_legacy_bin(tmp_path, policy, shards):
    folder = save_bin(policy, tmp_path / "bin", shards=shards)
    c = Checkpoint.open(folder)
    assert c.format == "bin" and len(c.files) == shards
    expected = _expected(policy)
    assert sorted(c.names) == sorted(expected)
    for name, t in expected.items():
        assert torch.equal(c.get(name), t), name
    assert c.specs["lm_head.weight"] == TensorSpec((384, 64), "F32")
    c.close()


def test_prefers_safetensors_when_both_exist(tmp_path, policy, tiny_tokenizer):
    folder = tiny.save_policy(policy, tiny_tokenizer, tmp_path / "both")
    other = tiny.build_policy(seed=99)
    torch.save(other.state_dict(), folder / "pytorch_model.bin")
    c = Checkpoint.open(folder)
    assert c.format == "safetensors"
    assert torch.equal(c.get("lm_head.weight"), policy.lm_head.weight.detach())


def test_bin_with_tied_weights_lists_them_once(tmp_path):
    model = tiny.build_policy(seed=4, tie_word_embeddings=True)
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()
    folder = save_bin(model, tmp_path / "tied")
    c = Checkpoint.open(folder)
    assert "lm_head.weight" not in c.names and "model.embed_tokens.weight" in c.names
    assert c.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "lm_head.weight" in c
    assert torch.equal(c.get("lm_head.weight"), sd["model.embed_tokens.weight"])


def test_bin_refuses_arbitrary_objects(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"w": torch.ones(2), "cfg": Path("x")}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        Checkpoint.open(folder)


def test_read_flat_ranges_and_buffer(tiny_pair):
    _, aligned = tiny_pair
    c = Checkpoint.open(aligned)
    full = c.get("model.layers.0.mlp.up_proj.weight").reshape(-1)
    buf = torch.empty(1000, dtype=torch.float32)
    part = c.read_flat("model.layers.0.mlp.up_proj.weight", 77, 777, buf)
    assert part.data_ptr() == buf.data_ptr()
    assert torch.equal(part, full[77:777])
    with pytest.raises(ValueError):
        c.read_flat("model.layers.0.mlp.up_proj.weight", 0, full.numel() + 1)
    with pytest.raises(CheckpointError, match="nope"):
        c.get("nope")


def test_errors_name_the_problem(tmp_path, tiny_pair, tiny_tokenizer, policy):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no model weights"):
        Checkpoint.open(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint.open(tmp_path / "missing")

    sharded = tiny.save_policy(policy, tiny_tokenizer, tmp_path / "sharded", max_shard_size="100KB")
    (sharded / "model-00002-of-00006.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00006.safetensors"):
        Checkpoint.open(sharded)

    trunc = tmp_path / "trunc"
    shutil.copytree(tiny_pair[1], trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|do not fit"):
        Checkpoint.open(trunc)


# ---- writing -----------------------------------------------------------------------------


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(300, 40, generator=g).to(torch.bfloat16),  # 24000 B
        "b.bias": torch.randn(3, generator=g).to(torch.bfloat16),  # odd byte count: 6 B
        "c.weight": torch.randn(100, 50, generator=g),  # 20000 B, F32 after an odd BF16
        "d.ids": torch.arange(7, dtype=torch.int64),
        "e.mask": torch.tensor([True, False, True]),
        "f.half": torch.randn(10, generator=g).half(),
        "g.scalar": torch.tensor(2.5),
        "h.empty": torch.empty(0, 4),
    }


def _check_written(folder: Path, tensors: dict[str, torch.Tensor], index: dict) -> None:
    c = Checkpoint.open(folder)
    assert sorted(c.names) == sorted(tensors)
    for name, t in tensors.items():
        got = c.get(name)
        assert got.dtype == t.dtype and torch.equal(got, t), name
    # The safetensors library itself must accept every file (offsets contiguous, aligned).
    for path in c.files:
        with safe_open(path, "pt") as f:
            assert f.metadata() == {"format": "pt"}
            for name in f.keys():  # noqa: SIM118
                assert torch.equal(f.get_tensor(name), tensors[name])
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in tensors.values()
    )


def test_sharded_writer_several_shards(tmp_path):
    tensors = _tensors()
    w = ShardedWriter(tmp_path / "out", max_shard_size=20_010)
    for name, t in tensors.items():
        w.add(name, t)
    index = w.close()
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    shards = [f for f in files if f.endswith(".safetensors")]
    assert shards == [f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
    on_disk = json.loads((tmp_path / "out/model.safetensors.index.json").read_text())
    assert on_disk == index
    _check_written(tmp_path / "out", tensors, index)


def test_sharded_writer_one_shard(tmp_path):
    tensors = _tensors()
    w = ShardedWriter(tmp_path / "out", max_shard_size="5GB")
    for name, t in tensors.items():
        w.add(name, t)
    index = w.close()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors"]
    _check_written(tmp_path / "out", tensors, index)


def test_planned_writer_streams_chunks(tmp_path):
    tensors = _tensors()
    specs = [(k, TensorSpec(tuple(t.shape), _name(t.dtype))) for k, t in tensors.items()]
    w = PlannedShardWriter(tmp_path / "out", specs, max_shard_size=20_010)
    assert len(w.filenames) == 3
    for name in w.order:
        flat = tensors[name].reshape(-1)
        for s in range(0, max(flat.numel(), 1), 1000):
            w.write(name, flat[s : s + 1000])
    index = w.close()
    _check_written(tmp_path / "out", tensors, index)


def test_planned_writer_enforces_its_plan(tmp_path):
    specs = [("x", TensorSpec((4,), "F32")), ("y", TensorSpec((2,), "F32"))]
    w = PlannedShardWriter(tmp_path / "out", specs, max_shard_size=10**9)
    with pytest.raises(RuntimeError, match="expected tensor 'x'"):
        w.write("y", torch.zeros(2))
    with pytest.raises(RuntimeError, match="planned F32"):
        w.write("x", torch.zeros(4, dtype=torch.float64))
    w.write("x", torch.zeros(3))
    with pytest.raises(RuntimeError, match="more data"):
        w.write("x", torch.zeros(2))
    with pytest.raises(RuntimeError, match="before tensor 'x' was complete"):
        w.close()


def test_plan_shards_like_huggingface_hub():
    specs = [(f"t{i}", TensorSpec((10,), "F32")) for i in range(5)]  # 40 B each
    specs.insert(2, ("big", TensorSpec((100,), "F32")))  # 400 B: a shard of its own
    shards = plan_shards(specs, max_shard_size=100)
    # As huggingface_hub: the oversized tensor's shard is closed at once, the open one goes on.
    assert [[n for n, _ in s] for s in shards] == [["big"], ["t0", "t1"], ["t2", "t3"], ["t4"]]


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size(" 1.5 gb ") == 1_500_000_000
    assert parse_size(1234) == 1234
    for bad in ("lots", "-1GB", "0MB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def _name(dtype: torch.dtype) -> str:
    from expo_batch.checkpoint import dtype_name

    return dtype_name(dtype)


def test_safetensors_written_by_library_are_read(tmp_path):
    tensors = _tensors()
    tensors.pop("h.empty")
    folder = tmp_path / "lib"
    folder.mkdir()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    got = state_dict_of(folder)
    for name, t in tensors.items():
        assert torch.equal(got[name], t)
