"""Model cards: built with huggingface_hub, loaded back, metadata and body checked."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from expo_batch import card
from expo_batch.errors import ExpoError
from expo_batch.io import read_json
from tests.fake_run import make_run


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("card") / "demo")
    pair = run.layout.pair("zephyr-beta")
    return run, pair, card.write_card(pair.model, pair.root)


def test_card_loads_back_with_its_metadata(written):
    _, pair, path = written
    assert path == pair.model / "README.md"
    loaded = ModelCard.load(path)
    d = loaded.data
    assert d.base_model == ["HuggingFaceH4/zephyr-7b-beta", "HuggingFaceH4/mistral-7b-sft-beta"]
    assert d.to_dict()["base_model_relation"] == "merge"
    assert {"expo", "model-extrapolation"} <= set(d.tags)
    assert d.library_name == "transformers" and d.pipeline_tag == "text-generation"
    assert d.license is None  # Hub aligned model, nothing in the local cache: omitted, not guessed
    sel = read_json(pair.sweep)["selection"]
    results = {r.metric_type: r for r in d.eval_results}
    assert results["reward"].metric_value == pytest.approx(sel["chosen_mean"], abs=1e-4)
    assert results["reward_gain"].metric_value == pytest.approx(sel["gain"], abs=1e-4)
    assert results["reward"].dataset_type == "HuggingFaceH4/ultrafeedback_binarized"
    assert results["reward"].dataset_revision == "4" * 40
    assert d.model_name == "zephyr-7b-beta-ExPO"


def test_card_body(written):
    _, pair, path = written
    text = path.read_text()
    body = ModelCard.load(path).text
    assert "α = 0.40" in body and "theta = 1.40 * theta_aligned - 0.40 * theta_sft" in body
    assert "float32" in body and "bf16" in body
    assert "| **0.40** |" in body and "rejected: truncation rate" in body  # the sweep table
    assert "![Mean reward and answer length against α](sweep.png)" in body
    assert (pair.model / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "`test_gen`" in body and "9f86d081884c7d65" in body and "batch size 8" in body
    assert "max_tokens=512" in body and "3" * 40 in body  # sampling and RM revision
    assert "8e167e67" in text or read_json(pair.sweep)["fingerprint"] in body
    assert "name: zephyr-beta\nsft: HuggingFaceH4/mistral-7b-sft-beta" in body  # manifest entry
    assert "expo-batch run registry.yaml --only zephyr-beta" in body
    assert "| table5.lc_wr | 13.2 |" in body and "+0.09" in body  # paper values
    assert "arXiv:2404.16792" in body and "Zheng, Chujie" in body
    assert "path/to/this/model" in body


def test_local_aligned_inherits_license_and_is_not_a_base_model(tmp_path):
    aligned = tmp_path / "my-aligned"
    aligned.mkdir()
    (aligned / "README.md").write_text("---\nlicense: apache-2.0\n---\n# my model\n")
    run = make_run(tmp_path / "demo", aligned_dir=aligned)
    pair = run.layout.pair("zephyr-beta")
    path = card.write_card(pair.model, pair.root, repo_id="me/custom-name")
    d = ModelCard.load(path).data
    assert d.license == "apache-2.0"
    assert d.base_model == ["HuggingFaceH4/mistral-7b-sft-beta"]  # the local path is omitted
    assert d.model_name == "custom-name"
    assert 'from_pretrained("me/custom-name"' in path.read_text()


def test_license_from_the_hub_cache(tmp_path, monkeypatch):
    """A Hub aligned model whose README.md is in the local cache at the resolved revision."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snap = cache / "models--HuggingFaceH4--zephyr-7b-beta" / "snapshots" / ("2" * 40)
    snap.mkdir(parents=True)
    (snap / "README.md").write_text("---\nlicense: mit\ntags: [x]\n---\nhi\n")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    info = {
        "aligned": {
            "ref": "HuggingFaceH4/zephyr-7b-beta@" + "2" * 40,
            "sha": "2" * 40,
            "local": False,
        }
    }
    assert card.inherited_license(info) == {"license": "mit"}
    assert card.inherited_license({"aligned": {"ref": "org/none", "sha": "9" * 40}}) == {}


def test_no_chosen_alpha_is_an_error(tmp_path):
    run = make_run(tmp_path / "demo")
    pair = run.layout.pair("tulu2-7b")
    pair.model.mkdir()
    with pytest.raises(ExpoError, match="no chosen alpha"):
        card.write_card(pair.model, pair.root)


def test_repo_names():
    assert (
        card.default_repo_name({"aligned": {"ref": "org/zephyr@abc", "local": False}})
        == "zephyr-ExPO"
    )
    assert card.default_repo_name({"spec": {"publish_name": "x"}}) == "x"
    assert card.default_repo_name({"aligned": {"ref": "/a/b/dpo", "local": True}}) == "dpo-ExPO"
