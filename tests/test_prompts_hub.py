"""Prompt sets from a Hub dataset, through the Hub edge, against the local stand-in server.

The dataset is shaped like the paper's ``HuggingFaceH4/ultrafeedback_binarized``: parquet splits
under ``data/``, rows with ``prompt``, ``prompt_id``, ``messages`` (the conversation, whose first
user message is the prompt) and the preference columns the tool never reads.
"""

from __future__ import annotations

import io
import json

import pytest

from expo_batch.errors import HubError, ScoringError
from expo_batch.hub.dataset import download_dataset_files, resolve_dataset
from expo_batch.manifest import PromptsConfig
from expo_batch.prompts import load_prompts
from tests import hubserver

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

hub_env = hubserver.hub_env
fake_hub = hubserver.fake_hub

SECRET = "hf_DaTaSeTsEcReT0123456789abcdef"
TEST_GEN = "data/test_gen-00000-of-00001.parquet"
TRAIN = "data/train_prefs-00000-of-00001.parquet"


def uf_rows(n: int, tag: str = "") -> list[dict]:
    """UltraFeedback-like rows; ``prompt`` differs from the first user message on purpose, since the
    authors' script reads ``messages``."""
    return [
        {
            "prompt": f"prompt column {tag}{i}",
            "prompt_id": f"{tag}id{i:03d}",
            "chosen": [
                {"role": "user", "content": f"question {tag}{i}"},
                {"role": "assistant", "content": "chosen answer"},
            ],
            "rejected": [
                {"role": "user", "content": f"question {tag}{i}"},
                {"role": "assistant", "content": "rejected answer"},
            ],
            "messages": [
                {"role": "user", "content": f"question {tag}{i}"},
                {"role": "assistant", "content": "an answer"},
            ],
            "score_chosen": 8.0,
            "score_rejected": 3.5,
        }
        for i in range(n)
    ]


def parquet_bytes(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def uf_files(n_test: int = 6, tag: str = "") -> dict[str, bytes]:
    return {
        "README.md": b"---\nlicense: mit\n---\n# UltraFeedback-like\n",
        TEST_GEN: parquet_bytes(uf_rows(n_test, tag)),
        TRAIN: parquet_bytes(uf_rows(50, "train-")),
    }


def data_gets(hub: hubserver.FakeHub) -> list[str]:
    return [r.path for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]


def test_first_user_messages_pinned_to_the_commit(fake_hub):
    sha = fake_hub.add_dataset("org/uf", uf_files())
    cfg = PromptsConfig(dataset="org/uf", split="test_gen", limit=3)
    ps = load_prompts(cfg)
    assert ps.texts == ["question 0", "question 1", "question 2"]
    assert ps.ids == ["id000", "id001", "id002"]
    assert ps.source["revision"] == sha and ps.source["requested_revision"] is None
    assert ps.source["files"] == [TEST_GEN] and ps.source["split"] == "test_gen"
    # the data was fetched at the SHA, and only the split asked for
    assert data_gets(fake_hub) == [f"/datasets/org/uf/resolve/{sha}/{TEST_GEN}"]
    assert fake_hub.unhandled == []

    # a second load asks the Hub for the revision only; the hash is stable
    fake_hub.reset_log()
    again = load_prompts(cfg)
    assert again.hash == ps.hash and again.source == ps.source
    assert [r.path for r in fake_hub.requests] == ["/api/datasets/org/uf"]

    whole = load_prompts(PromptsConfig(dataset="org/uf", split="test_gen"))
    assert len(whole) == 6 and whole.hash != ps.hash and whole.texts[:3] == ps.texts


def test_branch_and_tag_resolve_to_their_sha(fake_hub):
    sha1 = fake_hub.add_dataset("org/uf", uf_files(tag="v1-"), tags=("v1",))
    sha2 = fake_hub.add_commit(
        "org/uf", uf_files(tag="v2-"), message="refresh", repo_type="dataset"
    )
    old = load_prompts(PromptsConfig(dataset="org/uf", revision="v1", limit=2))
    new = load_prompts(PromptsConfig(dataset="org/uf", revision="main", limit=2))
    assert old.source["revision"] == sha1 and old.source["requested_revision"] == "v1"
    assert new.source["revision"] == sha2 and new.texts == ["question v2-0", "question v2-1"]
    assert old.hash != new.hash
    by_sha = load_prompts(PromptsConfig(dataset="org/uf", revision=sha1, limit=2))
    assert by_sha.hash == old.hash and by_sha.source["revision"] == sha1


def test_offline_after_one_online_load_makes_no_request(fake_hub, hub_env):
    fake_hub.add_dataset("org/uf", uf_files())
    for revision in (None, "main"):
        cfg = PromptsConfig(dataset="org/uf", revision=revision, limit=4)
        online = load_prompts(cfg)
        fake_hub.reset_log()
        hub_env.set_offline()
        offline = load_prompts(cfg)
        assert (offline.hash, offline.source) == (online.hash, online.source)
        assert fake_hub.requests == []
        hub_env.set_offline(False)


def test_offline_never_reads_a_partial_split(fake_hub, hub_env):
    """A limit read only the first shard: offline, the whole split is refused (the cached listing
    knows the second shard exists), not silently read from one shard."""
    rows = uf_rows(8)
    shards = {
        "data/test_gen-00000-of-00002.parquet": parquet_bytes(rows[:5]),
        "data/test_gen-00001-of-00002.parquet": parquet_bytes(rows[5:]),
    }
    fake_hub.add_dataset("org/sharded", shards)
    first = load_prompts(PromptsConfig(dataset="org/sharded", limit=4))
    assert len(first) == 4 and len(data_gets(fake_hub)) == 1
    assert len(load_prompts(PromptsConfig(dataset="org/sharded", limit=7))) == 7

    fake_hub.add_dataset("org/sharded2", shards)
    load_prompts(PromptsConfig(dataset="org/sharded2", limit=4))
    fake_hub.reset_log()
    hub_env.set_offline()
    assert load_prompts(PromptsConfig(dataset="org/sharded2", limit=4)).hash == first.hash
    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        load_prompts(PromptsConfig(dataset="org/sharded2"))
    assert fake_hub.requests == []


def test_offline_without_cache_says_so(fake_hub, hub_env):
    fake_hub.add_dataset("org/uf", uf_files())
    hub_env.set_offline()
    with pytest.raises(HubError) as e:
        load_prompts(PromptsConfig(dataset="org/uf", split="test_gen"))
    msg = str(e.value)
    assert "dataset 'org/uf' is not in the local Hugging Face cache" in msg
    assert "HF_HUB_OFFLINE" in msg and "HF_HUB_OFFLINE" in e.value.hint
    assert fake_hub.requests == []


def test_unknown_dataset_and_revision_name_the_dataset(fake_hub):
    fake_hub.add_dataset("org/uf", uf_files())
    fake_hub.add_repo("org/model-not-dataset", {"config.json": b"{}"})
    for name in ("org/nope", "org/model-not-dataset"):
        with pytest.raises(HubError) as e:
            load_prompts(PromptsConfig(dataset=name))
        msg = str(e.value)
        assert f"dataset repository {name} not found on the Hub ({fake_hub.url})" in msg, msg
        assert "org/name" in e.value.hint
    with pytest.raises(HubError) as e:
        resolve_dataset("org/uf", "v9", where="registry.yaml:5 prompts.revision")
    msg = str(e.value)
    assert "revision 'v9' not found in org/uf" in msg
    assert "registry.yaml:5 prompts.revision" in msg
    assert f"{fake_hub.url}/datasets/org/uf" in e.value.hint
    assert fake_hub.count("^/api/datasets/") == 3  # a 404 is not retried


def test_gated_dataset_hint_then_access_with_token(fake_hub, monkeypatch, capsys):
    fake_hub.add_dataset("org/gated", uf_files(), gated=True, granted={SECRET})
    cfg = PromptsConfig(dataset="org/gated", limit=2)
    for token, why in ((None, "no Hugging Face token is set"), ("hf_other0123456789", "granted")):
        if token:
            monkeypatch.setenv("HF_TOKEN", token)
        with pytest.raises(HubError) as e:
            load_prompts(cfg)
        msg = str(e.value)
        assert "org/gated is a gated dataset repository" in msg and why in msg
        assert "accept its license" in e.value.hint
        assert f"{fake_hub.url}/datasets/org/gated" in e.value.hint and "HF_TOKEN" in e.value.hint
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert load_prompts(cfg).texts == ["question 0", "question 1"]
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err


def test_jsonl_split_and_missing_split(fake_hub):
    rows = [
        {"prompt_id": "a", "messages": [{"role": "user", "content": "hello"}]},
        {"prompt_id": "b", "prompt": "plain prompt"},
    ]
    sha = fake_hub.add_dataset(
        "org/jsonl",
        {
            "test_gen.jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode(),
            "train.jsonl": b'{"prompt": "not this one"}\n',
        },
    )
    ps = load_prompts(PromptsConfig(dataset="org/jsonl", split="test_gen"))
    assert [(p.id, p.text) for p in ps] == [("a", "hello"), ("b", "plain prompt")]
    assert ps.source["files"] == ["test_gen.jsonl"] and ps.source["revision"] == sha
    with pytest.raises(ScoringError) as e:
        load_prompts(PromptsConfig(dataset="org/jsonl", split="test_sft"))
    assert "no data files for split 'test_sft'" in str(e.value) and sha in str(e.value)
    assert "test_gen.jsonl" in e.value.hint


def test_transient_failures_are_retried(fake_hub, capsys):
    sha = fake_hub.add_dataset("org/uf", uf_files())
    fake_hub.fail(1, status=503, path="^/api/datasets/org/uf")
    fake_hub.fail(1, status="drop", path=f"/resolve/.*{TEST_GEN}$")
    ps = load_prompts(PromptsConfig(dataset="org/uf", limit=1))
    assert ps.source["revision"] == sha and ps.texts == ["question 0"]
    assert "retrying" in capsys.readouterr().err


def test_download_names_a_file_the_dataset_lacks(fake_hub):
    fake_hub.add_dataset("org/uf", uf_files())
    ds = resolve_dataset("org/uf")
    assert {f.name for f in ds.files} == {"README.md", TEST_GEN, TRAIN}
    with pytest.raises(HubError, match=r"dataset 'org/uf' has no file 'data/nope.parquet'"):
        download_dataset_files(ds, ["data/nope.parquet"])
    [path] = download_dataset_files(ds, [TRAIN])
    assert pq.read_table(path).num_rows == 50 and ds.sha in str(path)
