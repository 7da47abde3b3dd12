"""The batch run end to end on tiny real models: results, resume, changed inputs, SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from expo_batch.io import read_json, read_jsonl
from expo_batch.layout import RunLayout
from expo_batch.ledger import Ledger
from tests import tiny
from tests.cli import cli

ROOT = Path(__file__).resolve().parents[1]
N_PROMPTS = 6

MANIFEST = """\
name: e2e
defaults:
  alphas: {alphas}
  dtype: float32
  prompts: {{path: prompts.jsonl}}
  sampling: {{max_tokens: 8}}
  scorer: {{model: ./rm, batch_size: {rm_batch}}}
  backend: transformers
  batch_size: 2
pairs:
  - name: good
    sft: ./sft
    aligned: ./aligned
    tags: [ok]
    selection: {{min_gain: -100}}   # always materialize the best candidate
  - name: broken
    sft: ./sft
    aligned: ./broken
  - name: good2
    sft: ./sft
    aligned: ./aligned2
    stop_token_ids: [2]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Two good pairs, one whose shapes do not match, a reward model and six prompts."""
    root = tmp_path_factory.mktemp("world")
    tok = tiny.build_tokenizer()
    sft = tiny.build_policy(seed=0)
    tiny.save_policy(sft, tok, root / "sft")
    tiny.save_policy(tiny.perturbed(sft, 0.05, 1), tok, root / "aligned")
    tiny.save_policy(tiny.perturbed(sft, 0.05, 2), tok, root / "aligned2")
    tiny.save_policy(tiny.build_policy(seed=3, intermediate_size=96), tok, root / "broken")
    tiny.build_reward_model(root / "rm")
    with open(root / "prompts.jsonl", "w") as f:
        for i, text in enumerate(tiny.corpus(N_PROMPTS, seed=5)):
            f.write(json.dumps({"id": f"q{i}", "prompt": text}) + "\n")
    return root


def manifest(world: Path, name: str = "registry.yaml", alphas="[0.5, 1.0]", rm_batch=4) -> Path:
    path = world / name
    path.write_text(MANIFEST.format(alphas=alphas, rm_batch=rm_batch))
    return path


def done_counts(run_dir: Path) -> Counter:
    with Ledger(RunLayout(run_dir).ledger) as ledger:
        return Counter((e["pair"], e["unit"]) for e in ledger.events(event="done"))


@pytest.fixture(scope="module")
def finished_run(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    code = cli("run", str(manifest(world)), "--output", str(out))
    assert code == 1  # the broken pair fails; the run goes on and says so
    return out / "e2e"


def test_end_to_end_run(finished_run, world, capsys):
    run = RunLayout(finished_run)
    with Ledger(run.ledger) as ledger:
        units = {(u.pair, u.unit): u for u in ledger.units()}
    # The broken pair failed before any download or generation, naming the tensor and shapes.
    broken = [u for (p, _), u in units.items() if p == "broken"]
    assert [u.state for u in broken] == ["done", "failed"]
    assert "model.layers.0.mlp.down_proj.weight" in broken[-1].error
    assert "[64, 128]" in broken[-1].error and "[64, 96]" in broken[-1].error
    assert not (run.pair("broken").root / "alpha-0.00").exists()

    for pair in ("good", "good2"):
        assert all(u.state == "done" for (p, _), u in units.items() if p == pair)
        pl = run.pair(pair)
        rewards = {}
        for alpha in (0.0, 0.5, 1.0):
            c = pl.candidate(alpha)
            gens, rs = read_jsonl(c.generations), read_jsonl(c.rewards)
            assert sorted(g["prompt_id"] for g in gens) == [f"q{i}" for i in range(N_PROMPTS)]
            assert {r["prompt_id"] for r in rs} == {g["prompt_id"] for g in gens}
            m = read_json(c.metrics)
            assert m["n"] == N_PROMPTS
            assert m["mean_reward"] == pytest.approx(sum(r["reward"] for r in rs) / N_PROMPTS)
            rewards[alpha] = m["mean_reward"]
        sel = read_json(pl.sweep)["selection"]
        best = max((0.5, 1.0), key=lambda a: rewards[a])
        if pair == "good" or rewards[best] > rewards[0.0]:
            assert sel["chosen_alpha"] == best
            assert (pl.model / "README.md").exists()
            _generates(pl.model)
        else:
            assert sel["chosen_alpha"] is None
            assert not pl.model.exists()
    for ext in ("md", "csv", "json"):
        assert run.results(ext).exists()
    assert "broken" in run.results("md").read_text()


def _generates(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "tell the water"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_rerun_recomputes_nothing_and_status_reports(finished_run, world, tmp_path, capsys):
    run_dir = tmp_path / "e2e"
    shutil.copytree(finished_run, run_dir)
    before = done_counts(run_dir)
    capsys.readouterr()
    assert cli("run", str(manifest(world)), "--output", str(tmp_path)) == 1
    assert done_counts(run_dir) == before
    assert "0 done, 2 skipped (already done), 1 failed" in capsys.readouterr().err
    assert cli("status", str(run_dir)) == 0
    text = capsys.readouterr().out
    assert "broken" in text and "failed" in text and "done" in text


def recomputed(run_dir: Path, before: Counter) -> set[tuple[str, str]]:
    after = done_counts(run_dir)
    return {k for k in after if after[k] > before.get(k, 0)}


def test_new_alpha_runs_only_that_candidate(finished_run, world, tmp_path):
    run_dir = tmp_path / "e2e"
    shutil.copytree(finished_run, run_dir)
    before = done_counts(run_dir)
    path = manifest(world, "grid.yaml", alphas="[0.5, 1.0, 2.0]")
    cli("run", str(path), "--output", str(tmp_path), "--name", "e2e", "--only", "good")
    redone = {u for p, u in recomputed(run_dir, before) if p == "good"}
    assert {"generate@2.00", "score@2.00", "select", "card"} <= redone
    assert redone <= {"generate@2.00", "score@2.00", "select", "materialize", "card"}


def test_scorer_batch_size_reruns_scoring_only(finished_run, world, tmp_path):
    run_dir = tmp_path / "e2e"
    shutil.copytree(finished_run, run_dir)
    before = done_counts(run_dir)
    old = read_json(RunLayout(run_dir).pair("good").sweep)["selection"]
    path = manifest(world, "rmbatch.yaml", rm_batch=3)
    cli("run", str(path), "--output", str(tmp_path), "--name", "e2e", "--only", "good")
    redone = {u for p, u in recomputed(run_dir, before) if p == "good"}
    assert {"score@0.00", "score@0.50", "score@1.00", "select", "card"} <= redone
    assert not any(
        u.startswith(("generate", "resolve", "fetch", "preflight", "check")) for u in redone
    )
    new = read_json(RunLayout(run_dir).pair("good").sweep)["selection"]
    # padding-safe scoring: another batch size gives the same rewards, so the same choice
    assert new["chosen_alpha"] == old["chosen_alpha"]
    assert new["baseline_mean"] == pytest.approx(old["baseline_mean"], abs=1e-5)


def _wait_for(ledger_path: Path, unit_prefix: str, event: str, proc, timeout=120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc {proc.returncode}) before {event} {unit_prefix}")
        if ledger_path.exists():
            try:
                with sqlite3.connect(ledger_path, timeout=1) as db:
                    hit = db.execute(
                        "SELECT 1 FROM events WHERE pair='good' AND event=? AND unit LIKE ?",
                        (event, unit_prefix + "%"),
                    ).fetchone()
            except sqlite3.OperationalError:
                hit = None
            if hit:
                return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {event} {unit_prefix}")


def test_sigkill_at_any_step_then_resume_equals_uninterrupted(finished_run, world, tmp_path):
    run_dir = tmp_path / "e2e"
    ledger = RunLayout(run_dir).ledger
    args = [
        sys.executable,
        "-m",
        "tests.run_slowly",
        "run",
        str(manifest(world)),
        "--output",
        str(tmp_path),
        "--only",
        "good",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for unit, event in (
        ("generate@0.50", "chunk"),
        ("score@0.00", "chunk"),
        ("materialize", "start"),
    ):
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_for(ledger, unit, event, proc)
            if unit == "materialize":
                time.sleep(0.3)  # some shards are being written
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
    with Ledger(ledger) as led:
        assert led.get("good", "materialize").state == "running"  # killed inside it
    assert not (RunLayout(run_dir).pair("good").model / "config.json").exists()
    final = subprocess.run(
        args[:2] + ["expo_batch"] + args[3:], cwd=ROOT, env=env, capture_output=True
    )
    assert final.returncode == 0, final.stderr.decode()[-2000:]

    # No finished unit was computed twice.
    counts = done_counts(run_dir)
    assert counts and max(counts.values()) == 1, counts
    # The outputs equal those of the uninterrupted run.
    ref, got = RunLayout(finished_run).pair("good"), RunLayout(run_dir).pair("good")
    for alpha in (0.0, 0.5, 1.0):
        for name in ("generations", "rewards"):
            key = lambda r: r["prompt_id"]  # noqa: E731
            a = sorted(read_jsonl(getattr(ref.candidate(alpha), name)), key=key)
            b = sorted(read_jsonl(getattr(got.candidate(alpha), name)), key=key)
            if name == "rewards":
                assert [r["prompt_id"] for r in a] == [r["prompt_id"] for r in b]
                assert [r["reward"] for r in a] == pytest.approx([r["reward"] for r in b], abs=1e-5)
            else:
                assert a == b
    assert (
        read_json(got.sweep)["selection"]["chosen_alpha"]
        == read_json(ref.sweep)["selection"]["chosen_alpha"]
    )
    if ref.model.exists():
        for f in ref.model.glob("*.safetensors"):
            assert (got.model / f.name).read_bytes() == f.read_bytes()
    assert not list(got.root.glob(".model.tmp-*"))


def test_ctrl_c_stops_cleanly_and_keeps_what_is_done(world, tmp_path):
    run_dir = tmp_path / "e2e"
    args = [sys.executable, "-m", "tests.run_slowly", "run", str(manifest(world)),
            "--output", str(tmp_path), "--only", "good"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(RunLayout(run_dir).ledger, "generate@0.50", "chunk", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert b"interrupted: everything finished so far is saved" in err
    assert b"Traceback" not in err
    with Ledger(RunLayout(run_dir).ledger) as ledger:
        assert ledger.get("good", "generate@0.00").state == "done"
        assert ledger.get("good", "generate@0.50").state == "running"
    assert RunLayout(run_dir).results("md").exists()  # the partial table was written
    assert read_jsonl(RunLayout(run_dir).pair("good").candidate(0.5).generations)  # chunks kept
