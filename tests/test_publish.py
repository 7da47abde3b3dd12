"""publish_run against the local Hub stand-in (tests/hubserver.py): dry run, upload, skip on the
same fingerprint, eligibility, --only, and the CLI."""

from __future__ import annotations

import json

import pytest

from expo_batch import publish
from expo_batch.errors import UsageError
from tests.fake_run import make_run
from tests.hubserver import fake_hub, hub_env  # noqa: F401, F811 (fixtures)


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "demo")


def _by_pair(outcomes):
    return {o.pair: o for o in outcomes}


def test_dry_run_touches_nothing(run, fake_hub):  # noqa: F811
    readme = run.layout.pair("zephyr-beta").model / "README.md"
    outcomes = _by_pair(publish.publish_run(run.root, namespace="me", dry_run=True))
    z = outcomes["zephyr-beta"]
    assert z.status == "dry-run" and z.repo_id == "me/zephyr-7b-beta-ExPO" and z.alpha == 0.4
    assert "pair zephyr-beta" in z.result.commit_message and "alpha 0.40" in z.result.commit_message
    assert z.fingerprint in z.result.commit_message
    assert {o.status for p, o in outcomes.items() if p != "zephyr-beta"} == {"not eligible"}
    assert "no alpha chosen" in outcomes["tulu2-7b"].detail
    assert "failed at preflight" in outcomes["broken"].detail
    assert "pending" in outcomes["pending"].detail
    assert fake_hub.count() == 0 and not fake_hub.repos  # no network at all
    assert not readme.exists()  # the card is not (re)written in a dry run


def test_upload_then_skip_on_same_fingerprint(run, fake_hub, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_TOKEN", "hf_writer")
    first = _by_pair(publish.publish_run(run.root, namespace="me", private=True))
    z = first["zephyr-beta"]
    assert z.status == "uploaded", z.detail
    head = fake_hub.head("me/zephyr-7b-beta-ExPO")
    assert {"README.md", "sweep.png", "config.json", "expo_publish.json"} <= set(head.files)
    assert json.loads(head.files["expo_publish.json"])["fingerprint"] == z.fingerprint
    assert b"me/zephyr-7b-beta-ExPO" in head.files["README.md"]  # card rewritten with the repo id
    assert "pair zephyr-beta" in head.message and "alpha 0.40" in head.message
    pushed = fake_hub.repos["me/zephyr-7b-beta-ExPO"].n_commits_pushed

    again = _by_pair(publish.publish_run(run.root, namespace="me"))
    assert again["zephyr-beta"].status == "skipped"
    assert fake_hub.repos["me/zephyr-7b-beta-ExPO"].n_commits_pushed == pushed
    assert "1 skipped (zephyr-beta)" in publish.summary(list(again.values()))


def test_missing_token_fails_the_pair_not_the_batch(run, fake_hub):  # noqa: F811
    outcomes = _by_pair(publish.publish_run(run.root, namespace="me"))
    assert outcomes["zephyr-beta"].status == "failed"
    assert "HF_TOKEN" in outcomes["zephyr-beta"].detail
    assert outcomes["tulu2-7b"].status == "not eligible"


def test_only_and_namespace(run, fake_hub):  # noqa: F811
    outs = publish.publish_run(run.root, namespace="me", only=["tulu2-*"], dry_run=True)
    assert [o.pair for o in outs] == ["tulu2-7b"]
    outs = publish.publish_run(run.root, namespace="me", only=["table5"], dry_run=True)
    assert [o.pair for o in outs] == ["zephyr-beta"]  # by tag
    with pytest.raises(UsageError, match="matches no pair"):
        publish.publish_run(run.root, namespace="me", only=["nope"], dry_run=True)
    with pytest.raises(UsageError, match="namespace"):
        publish.publish_run(run.root, namespace="me/you", dry_run=True)


def test_cli_publish_dry_run(run, fake_hub):  # noqa: F811
    from typer.testing import CliRunner

    from expo_batch.cli import app

    res = CliRunner().invoke(app, ["publish", str(run.root), "--namespace", "org", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "zephyr-beta: dry-run -> org/zephyr-7b-beta-ExPO" in res.stdout
    assert "1 would upload, 3 not eligible (tulu2-7b, broken, pending)" in res.stdout
    res = CliRunner().invoke(app, ["publish", str(run.root), "--namespace", "org"])
    assert res.exit_code == 1 and "failed" in res.stdout  # no token
