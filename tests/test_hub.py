"""The Hub edge against a local stand-in server (tests/hubserver.py) and the real client."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from expo_batch import hub
from expo_batch.errors import CheckpointError, HubError
from expo_batch.refs import parse_ref
from tests import hubserver, tiny

# fixtures of the local Hub stand-in
hub_env = hubserver.hub_env
fake_hub = hubserver.fake_hub

SECRET = "hf_SeCrEtToKeN0123456789abcdefXYZ"


# ---- tiny repos ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def hub_models(tmp_path_factory, tiny_pair, tiny_tokenizer) -> dict[str, Path]:
    """Folders served as repos: the tiny pair, a shape- and a vocab-mismatched model, a .bin-only
    model, a repo with both formats + remote code + a subfolder, and a sharded checkpoint."""
    import torch

    root = tmp_path_factory.mktemp("hub_models")
    sft, aligned = tiny_pair
    out = {"sft": sft, "aligned": aligned}
    out["wide"] = tiny.save_policy(
        tiny.build_policy(seed=2, intermediate_size=96), tiny_tokenizer, root / "wide"
    )
    out["bigvocab"] = tiny.save_policy(
        tiny.build_policy(seed=3, vocab_size=400), tiny_tokenizer, root / "bigvocab"
    )
    model = tiny.build_policy(seed=0)
    binonly = root / "binonly"
    tiny.save_policy(model, tiny_tokenizer, binonly)
    for f in binonly.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), binonly / "pytorch_model.bin")
    out["binonly"] = binonly
    both = root / "both"
    shutil.copytree(aligned, both)
    torch.save(model.state_dict(), both / "pytorch_model.bin")
    shutil.copy(aligned / "model.safetensors", both / "consolidated.safetensors")
    (both / "modeling_custom.py").write_text("# remote code\n")
    (both / "README.md").write_text("# card\n")
    (both / "original").mkdir()
    (both / "original" / "consolidated.pth").write_bytes(b"\0" * 1000)
    out["both"] = both
    out["sharded"] = tiny.save_policy(
        tiny.perturbed(model, 0.05, seed=1),
        tiny_tokenizer,
        root / "sharded",
        max_shard_size="100KB",
    )
    return out


@pytest.fixture
def served(fake_hub, hub_models):
    """Every tiny model as ``org/<name>`` on the stand-in Hub; returns {name: sha}."""
    return {name: fake_hub.add_repo(f"org/{name}", path) for name, path in hub_models.items()}


def ref(text: str):
    return parse_ref(text)


def assert_no_weight_download(fake_hub):
    """Every weight request was a ranged header read (the client asks for the first 100 kB, then
    the rest of a longer header); a file larger than that was never sent whole."""
    reqs = fake_hub.weight_requests()
    assert reqs and all(r.range and r.range.startswith("bytes=") for r in reqs), reqs
    for r in reqs:
        repo_id, name = r.path.strip("/").split("/resolve/")[0], r.path.rsplit("/", 1)[-1]
        size = len(fake_hub.head(repo_id).files[name])
        assert r.bytes_sent <= 100_001 and (size <= 100_001 or r.bytes_sent < size), (r, size)


# ---- resolve / pin ------------------------------------------------------------------------------


def test_resolve_pins_branch_tag_and_sha(fake_hub, hub_models):
    sha1 = fake_hub.add_repo("org/m", hub_models["sft"], tags=("v1",))
    r = hub.resolve(ref("org/m"), where="registry.yaml:3 pairs[0].sft")
    assert (r.sha, r.source, r.is_local, r.local_path) == (sha1, "hub", False, None)
    assert r.pinned == f"org/m@{sha1}"
    sizes = {f.name: f.size for f in r.files}
    assert sizes["model.safetensors"] == (hub_models["sft"] / "model.safetensors").stat().st_size

    files = dict(fake_hub.head("org/m").files, **{"config.json": b"{}"})
    sha2 = fake_hub.add_commit("org/m", files, message="update")
    assert sha2 != sha1
    assert hub.resolve(ref("org/m")).sha == sha2  # the branch moved
    assert hub.resolve(ref("org/m@v1")).sha == sha1  # the tag did not
    assert hub.resolve(ref(f"org/m@{sha1}")).sha == sha1


def test_fetch_is_pinned_to_the_resolved_sha(fake_hub, hub_models):
    sha1 = fake_hub.add_repo("org/m", hub_models["sft"])
    pinned = hub.resolve(ref("org/m"))
    files = dict(fake_hub.head("org/m").files, **{"generation_config.json": b'{"moved": true}'})
    fake_hub.add_commit("org/m", files, message="later")
    folder = hub.fetch(pinned)
    assert folder.name == sha1
    assert json.loads((folder / "generation_config.json").read_text()) != {"moved": True}
    assert (folder / "model.safetensors").read_bytes() == (
        hub_models["sft"] / "model.safetensors"
    ).read_bytes()


def test_local_folder_hash_is_cheap_deterministic_and_content_sensitive(hub_models, tmp_path):
    sft, aligned = hub_models["sft"], hub_models["aligned"]
    a = hub.resolve(ref(str(sft)))
    assert a.is_local and a.source == "local" and a.local_path == sft and len(a.sha) == 64
    assert hub.resolve(ref(str(sft))).sha == a.sha
    # same shapes and configs, different weights: told apart by the sampled bytes
    assert hub.resolve(ref(str(aligned))).sha != a.sha
    copy = tmp_path / "copy"
    shutil.copytree(sft, copy)
    assert hub.resolve(ref(str(copy))).sha == a.sha  # content, not path
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("64", "65", 1))
    assert hub.resolve(ref(str(copy))).sha != a.sha
    with pytest.raises(CheckpointError, match="does not exist.*m.yaml:1"):
        hub.resolve(ref(str(tmp_path / "missing")), where="m.yaml:1")


# ---- offline / network down ---------------------------------------------------------------------


def test_offline_resolves_and_fetches_from_cache(fake_hub, served, hub_env):
    online = hub.resolve(ref("org/sft"))
    folder = hub.fetch(online)
    n = len(fake_hub.requests)
    hub_env.set_offline()
    cached = hub.resolve(ref("org/sft"), where="r.yaml:4")
    assert (cached.sha, cached.source) == (online.sha, "cache")
    assert hub.fetch(cached) == folder
    assert hub.remote_specs(cached) == hub.read_local_specs(folder)
    assert len(fake_hub.requests) == n  # offline means no request at all


def test_offline_without_cache_says_so(fake_hub, served, hub_env):
    hub_env.set_offline()
    with pytest.raises(HubError) as e:
        hub.resolve(ref("org/aligned"), where="registry.yaml:9 pairs[1].aligned")
    msg = str(e.value)
    assert "not in the local Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg
    assert "registry.yaml:9 pairs[1].aligned" in msg and "'org/aligned'" in msg
    assert fake_hub.requests == []


def test_network_down_uses_cache_else_clear_failure(fake_hub, served, monkeypatch, capsys):
    hub.fetch(hub.resolve(ref("org/sft")))
    capsys.readouterr()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    r = hub.resolve(ref("org/sft"))
    assert r.source == "cache" and r.sha == served["sft"]
    err = capsys.readouterr().err
    assert "retrying" in err and "using the cached revision" in err
    # the next references of the batch are tried once, without another round of backoff
    with pytest.raises(HubError) as e:
        hub.resolve(ref("org/aligned"), where="registry.yaml:12 pairs[2].aligned")
    msg = str(e.value)
    assert "could not reach the Hub at http://127.0.0.1:9" in msg
    assert "registry.yaml:12 pairs[2].aligned" in msg and "Connection refused" in msg
    assert "retrying" not in capsys.readouterr().err


# ---- preflight ----------------------------------------------------------------------------------


def test_preflight_compatible_pair_reads_only_headers(fake_hub, served, hub_models, tmp_path):
    sft, aligned = hub.resolve(ref("org/sft")), hub.resolve(ref("org/aligned"))
    report = hub.preflight(sft, aligned, output_dir=tmp_path / "out")
    assert report.ok and report.compat.ok and report.compat.n_tensors > 0
    weights = (hub_models["aligned"] / "model.safetensors").stat().st_size
    assert report.aligned.weight_bytes == weights == report.output_bytes
    assert report.aligned.download_bytes == report.aligned.total_bytes > weights
    assert report.download_bytes == report.sft.download_bytes + report.aligned.download_bytes
    assert report.needed_bytes >= report.download_bytes + report.output_bytes
    assert report.free_bytes > 0
    d = report.to_dict()
    assert d["ok"] and d["sft"]["sha"] == sft.sha and d["compat"]["problems"] == []
    json.dumps(d)
    assert fake_hub.weight_requests(), "headers were read remotely"
    assert_no_weight_download(fake_hub)
    # after a fetch the same pair needs no download
    hub.fetch(sft)
    hub.fetch(aligned)
    again = hub.preflight(sft, aligned, output_dir=tmp_path / "out")
    assert again.download_bytes == 0 and again.needed_bytes == again.output_bytes


def test_preflight_catches_shape_mismatch_before_download(fake_hub, served, tmp_path):
    report = hub.preflight(
        hub.resolve(ref("org/sft")), hub.resolve(ref("org/wide")), output_dir=tmp_path
    )
    assert not report.ok
    assert any("mlp" in p and "[128, 64]" in p and "[96, 64]" in p for p in report.compat.problems)
    with pytest.raises(CheckpointError, match="cannot be extrapolated"):
        report.require_ok()
    assert_no_weight_download(fake_hub)


def test_preflight_catches_vocab_mismatch_and_copy_extra(fake_hub, served, tmp_path):
    sft, big = hub.resolve(ref("org/sft")), hub.resolve(ref("org/bigvocab"))
    report = hub.preflight(sft, big, output_dir=tmp_path)
    assert not report.ok
    assert any("vocabulary size differs" in p and "384 vs 400" in p for p in report.compat.problems)
    with pytest.raises(CheckpointError) as e:
        hub.require_ok(report)
    assert "copy-extra" in e.value.hint
    # the shape check is the vocab one: with copy-extra the rest of the pair differs only in weights
    relaxed = hub.preflight(sft, big, output_dir=tmp_path, vocab_policy="copy-extra")
    assert relaxed.compat.ok and relaxed.compat.vocab_mismatches
    assert_no_weight_download(fake_hub)


def test_preflight_bin_only_skips_header_check(fake_hub, served, tmp_path):
    report = hub.preflight(
        hub.resolve(ref("org/binonly")), hub.resolve(ref("org/aligned")), output_dir=tmp_path
    )
    assert report.compat is None and report.ok
    assert any("org/binonly" in n and ".bin" in n for n in report.notes)
    assert report.sft.format == "bin"
    assert not [r for r in fake_hub.requests if r.path.endswith(".bin")]


def test_preflight_sharded_reads_every_shard_header(fake_hub, served, hub_models, tmp_path):
    shards = sorted(p.name for p in hub_models["sharded"].glob("*.safetensors"))
    assert len(shards) > 1
    report = hub.preflight(
        hub.resolve(ref("org/sft")), hub.resolve(ref("org/sharded")), output_dir=tmp_path
    )
    assert report.ok and report.aligned.weight_bytes == sum(
        (hub_models["sharded"] / s).stat().st_size for s in shards
    )
    assert {r.path.rsplit("/", 1)[-1] for r in fake_hub.weight_requests()} >= set(shards)
    assert_no_weight_download(fake_hub)


def test_preflight_refuses_when_disk_too_small(fake_hub, served, tmp_path, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    report = hub.preflight(
        hub.resolve(ref("org/sft")), hub.resolve(ref("org/aligned")), output_dir=tmp_path / "out"
    )
    assert report.compat.ok and not report.ok
    assert report.to_dict()["disk"][0]["ok"] is False
    with pytest.raises(HubError) as e:
        report.require_ok()
    msg = str(e.value)
    assert "not enough disk space" in msg and f"only {hub.fmt_bytes(1000)} free" in msg
    assert hub.fmt_bytes(report.needed_bytes) in msg and str(tmp_path / "out") in msg


def test_preflight_local_pair_needs_no_network(hub_models, tmp_path, hub_env):
    sft, aligned = (
        hub.resolve(ref(str(hub_models["sft"]))),
        hub.resolve(ref(str(hub_models["aligned"]))),
    )
    report = hub.preflight(sft, aligned, output_dir=tmp_path)
    assert report.ok and report.download_bytes == 0
    assert hub.fetch(sft) == hub_models["sft"]


# ---- errors -------------------------------------------------------------------------------------


def test_gated_repo_without_and_with_token(fake_hub, hub_models, monkeypatch, tmp_path):
    fake_hub.add_repo("org/gated", hub_models["aligned"], gated=True, granted={SECRET})
    fake_hub.add_repo("org/sft", hub_models["sft"])
    gated = hub.resolve(ref("org/gated"), where="registry.yaml:20 pairs[4].aligned")
    for token, why in (
        (None, "no Hugging Face token is set"),
        ("hf_other0123456789", "not been granted"),
    ):
        if token:
            monkeypatch.setenv("HF_TOKEN", token)
        with pytest.raises(HubError) as e:
            hub.remote_specs(gated)
        msg = str(e.value)
        assert "org/gated is a gated repository" in msg and why in msg
        assert "registry.yaml:20 pairs[4].aligned" in msg
        assert "accept its license" in e.value.hint and f"{fake_hub.url}/org/gated" in e.value.hint
        assert "HF_TOKEN" in e.value.hint and "hf auth login" in e.value.hint
        with pytest.raises(HubError, match="gated"):
            hub.fetch(gated)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    report = hub.preflight(hub.resolve(ref("org/sft")), gated, output_dir=tmp_path)
    assert report.ok
    assert (hub.fetch(gated) / "model.safetensors").is_file()


def test_rejected_token(fake_hub, served, monkeypatch):
    fake_hub.valid_tokens = {"hf_thegoodone123456"}
    monkeypatch.setenv("HF_TOKEN", "hf_expired9876543210")
    with pytest.raises(HubError) as e:
        hub.resolve(ref("org/sft"), where="r.yaml:2")
    assert "rejected the token" in str(e.value) and "r.yaml:2" in str(e.value)
    assert "HF_TOKEN" in e.value.hint
    assert fake_hub.count("/api/models/") == 1  # a 401 is not retried


def test_unknown_repo_and_revision_name_the_manifest_line(fake_hub, served):
    with pytest.raises(HubError) as e:
        hub.resolve(ref("org/nope@main"), where="registry.yaml:42 pairs[3].aligned")
    msg = str(e.value)
    assert "repository org/nope not found" in msg
    assert "'org/nope@main' (registry.yaml:42 pairs[3].aligned)" in msg
    with pytest.raises(HubError) as e:
        hub.resolve(ref("org/sft@v9"), where="registry.yaml:43 pairs[3].sft")
    msg = str(e.value)
    assert "revision 'v9' not found in org/sft" in msg and "registry.yaml:43 pairs[3].sft" in msg
    assert fake_hub.count("/api/models/") == 2  # not found is not retried


@pytest.mark.parametrize("failure", [503, "drop"])
def test_transient_failures_are_retried_then_succeed(fake_hub, served, failure, capsys):
    fake_hub.fail(2, status=failure, path=r"^/api/models/org/sft")
    r = hub.resolve(ref("org/sft"))
    assert r.sha == served["sft"]
    assert fake_hub.count(r"^/api/models/org/sft") == 3
    assert "retrying" in capsys.readouterr().err


def test_transient_failures_retried_then_fail(fake_hub, served):
    fake_hub.fail(100, status=502, path=r"^/api/models/org/sft")
    with pytest.raises(HubError) as e:
        hub.resolve(ref("org/sft"), where="registry.yaml:7 pairs[0].sft")
    msg = str(e.value)
    assert "could not reach the Hub" in msg and "after 3 attempts" in msg and "502" in msg
    assert "registry.yaml:7 pairs[0].sft" in msg
    assert fake_hub.count(r"^/api/models/org/sft") == 3


def test_header_read_retried(fake_hub, served, hub_models, capsys):
    fake_hub.fail(1, status="drop", path=r"/resolve/.*model\.safetensors$")
    specs = hub.remote_specs(hub.resolve(ref("org/aligned")))
    assert specs == hub.read_local_specs(hub_models["aligned"])
    assert fake_hub.requests[-3].status == 0  # the dropped one, then HEAD and ranged GET again
    assert "retrying" in capsys.readouterr().err


def test_token_never_appears_in_output(fake_hub, hub_models, monkeypatch, capsys, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    fake_hub.add_repo("org/gated", hub_models["aligned"], gated=True)  # token not granted
    fake_hub.add_repo("org/sft", hub_models["sft"])
    messages = []
    gated = hub.resolve(ref("org/gated"))
    for action in (
        lambda: hub.remote_specs(gated),
        lambda: hub.fetch(gated),
        lambda: hub.resolve(ref("org/missing")),
    ):
        with pytest.raises(HubError) as e:
            action()
        messages.append(str(e.value))
    fake_hub.fail(1, status=503, path="^/api/models/org/sft")
    hub.fetch(hub.resolve(ref("org/sft")))
    res = hub.publish(hub_models["sft"], "me/out", fingerprint="f1", commit_message="m")
    messages += [res.describe(), json.dumps(res.to_dict())]
    fake_hub.valid_tokens = set()
    with pytest.raises(HubError) as e:
        hub.resolve(ref("org/sft"))
    messages.append(str(e.value))
    captured = capsys.readouterr()
    everything = "\n".join([*messages, captured.out, captured.err, caplog.text])
    assert SECRET not in everything
    assert SECRET[3:12] not in everything
    assert any(r.authorized for r in fake_hub.requests)  # the token was really sent
    assert hub.scrub(f"token={SECRET}") == "token=***"


# ---- fetch --------------------------------------------------------------------------------------


def test_fetch_allow_patterns_prefer_safetensors_no_code(fake_hub, served, monkeypatch):
    r = hub.resolve(ref("org/both"))
    sel = hub.select_files(r.files)
    assert sel.format == "safetensors"
    folder = hub.fetch(r)
    got = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert "model.safetensors" in got and "config.json" in got and "tokenizer.json" in got
    assert "pytorch_model.bin" not in got and "modeling_custom.py" not in got
    assert "consolidated.safetensors" not in got  # a second copy of the weights
    assert not any(n.startswith("original/") for n in got) and "README.md" not in got
    assert got == {f.name for f in sel.files}
    unwanted = (".bin", ".pth", ".py", "consolidated.safetensors")
    assert not [q for q in fake_hub.requests if q.path.endswith(unwanted)]

    folder = hub.fetch(r, trust_remote_code=True)
    assert (folder / "modeling_custom.py").is_file()
    assert not (folder / "pytorch_model.bin").exists()


def test_fetch_bin_only_repo_and_sharded(fake_hub, served, hub_models):
    folder = hub.fetch(hub.resolve(ref("org/binonly")))
    assert (folder / "pytorch_model.bin").is_file() and (folder / "config.json").is_file()
    folder = hub.fetch(hub.resolve(ref("org/sharded")))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        assert (folder / shard).read_bytes() == (hub_models["sharded"] / shard).read_bytes()


# ---- publish ------------------------------------------------------------------------------------


def test_publish_dry_run_touches_nothing(fake_hub, hub_models):
    res = hub.publish(
        hub_models["aligned"],
        "me/tiny-expo",
        private=True,
        fingerprint="abc123",
        commit_message="ExPO org/sft -> org/aligned, alpha 0.30",
        dry_run=True,
    )
    assert res.action == "dry-run" and res.url == f"{fake_hub.url}/me/tiny-expo"
    text = res.describe()
    assert f"{fake_hub.url}/me/tiny-expo" in text and "private" in text and "abc123" in text
    assert "alpha 0.30" in text
    for f in hub_models["aligned"].iterdir():
        assert f.name in text
    assert "expo_publish.json" in text
    assert (
        dict(res.files)["model.safetensors"]
        == (hub_models["aligned"] / "model.safetensors").stat().st_size
    )
    assert fake_hub.requests == [] and "me/tiny-expo" not in fake_hub.repos


def test_publish_uploads_once_then_skips_same_fingerprint(fake_hub, hub_models, monkeypatch):
    with pytest.raises(HubError, match="needs a Hugging Face token"):
        hub.publish(hub_models["aligned"], "me/x", fingerprint="f", commit_message="m")
    monkeypatch.setenv("HF_TOKEN", "hf_writer0123456789")
    kw = dict(commit_message="ExPO org/sft -> org/aligned alpha=0.3 (fp f1)")
    first = hub.publish(hub_models["aligned"], "me/tiny-expo", fingerprint="f1", **kw)
    assert first.action == "uploaded" and first.commit_url
    repo = fake_hub.repos["me/tiny-expo"]
    assert repo.n_commits_pushed == 1
    head = fake_hub.head("me/tiny-expo")
    assert head.message == kw["commit_message"]
    assert (
        head.files["model.safetensors"]
        == (hub_models["aligned"] / "model.safetensors").read_bytes()
    )
    assert json.loads(head.files[hub.MARKER])["fingerprint"] == "f1"
    assert hub.remote_fingerprint("me/tiny-expo") == "f1"

    second = hub.publish(hub_models["aligned"], "me/tiny-expo", fingerprint="f1", **kw)
    assert second.action == "skipped" and "already holds" in second.describe()
    assert repo.n_commits_pushed == 1

    third = hub.publish(hub_models["aligned"], "me/tiny-expo", fingerprint="f2", **kw)
    assert third.action == "uploaded" and repo.n_commits_pushed == 2
    assert fake_hub.unhandled == []


def test_select_files_rules():
    def names(files, **kw):
        return [f.name for f in hub.select_files([hub.RepoFile(n, 1) for n in files], **kw).files]

    assert names(["model.safetensors", "model.fp16.safetensors", "config.json", "README.md"]) == [
        "config.json",
        "model.safetensors",
    ]
    sharded = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert names([*sharded, "model.safetensors.index.json", "pytorch_model.bin.index.json"]) == [
        *sharded,
        "model.safetensors.index.json",
    ]
    bins = ["pytorch_model.bin", "training_args.bin", "tokenizer.model", "modeling_x.py"]
    assert names(bins) == ["pytorch_model.bin", "tokenizer.model"]
    assert names(bins, trust_remote_code=True) == [
        "modeling_x.py",
        "pytorch_model.bin",
        "tokenizer.model",
    ]
    assert hub.select_files([hub.RepoFile("config.json", 1)]).format is None
    assert hub.select_files([hub.RepoFile("a[1].safetensors", 1)]).allow_patterns == [
        "a[[]1].safetensors"
    ]
