"""The results table: every format from a recorded run (complete, none chosen, failed, pending),
numbers checked against the artifacts the run wrote, and the CLI over it."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest

from expo_batch import report
from expo_batch.cli import app
from expo_batch.io import read_json, read_jsonl
from expo_batch.layout import RunLayout
from expo_batch.ledger import Ledger
from tests.fake_run import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "demo")


@pytest.fixture(scope="module")
def rows(run):
    return report.collect(run.root)


def test_one_row_per_pair_in_run_order_with_state(rows):
    assert [r.pair for r in rows] == ["zephyr-beta", "tulu2-7b", "broken", "pending"]
    states = {r.pair: r.state for r in rows}
    assert states == {
        "zephyr-beta": "done",
        "tulu2-7b": "done",
        "broken": "failed",
        "pending": "pending",
    }


def test_numbers_match_the_per_prompt_rows(run, rows):
    """Recompute baseline and chosen means from rewards.jsonl, lengths from generations.jsonl."""
    z = rows[0]
    lay = RunLayout(run.root).pair("zephyr-beta")
    sel = read_json(lay.sweep)["selection"]
    assert z.chosen_alpha == sel["chosen_alpha"] == 0.4  # 0.5 was rejected by the truncation guard
    base = [r["reward"] for r in read_jsonl(lay.candidate(0.0).rewards)]
    best = [r["reward"] for r in read_jsonl(lay.candidate(0.4).rewards)]
    assert z.baseline_mean == pytest.approx(statistics.fmean(base))
    assert z.chosen_mean == pytest.approx(statistics.fmean(best))
    assert z.gain == pytest.approx(statistics.fmean(best) - statistics.fmean(base))
    assert z.ci_low < z.gain < z.ci_high
    lengths = [g["n_tokens"] for g in read_jsonl(lay.candidate(0.4).generations)]
    assert z.chosen_length == pytest.approx(statistics.fmean(lengths))
    assert z.n == 24
    # paper: expo_reward - reward = 5.40 - 5.31
    assert z.paper_alpha == 0.1 and z.paper_gain == pytest.approx(0.09)
    assert z.rejected == [{"alpha": 0.5, "reason": sel["rejected"][0]["reason"]}]


def test_none_chosen_failed_and_pending_rows(run, rows):
    _, tulu, broken, pending = rows
    assert tulu.chosen_alpha is None and tulu.gain is None and tulu.selected
    assert tulu.reason == "no alpha beats the baseline"
    assert tulu.baseline_mean is not None and tulu.paper_alpha == 0.5 and tulu.paper_gain is None
    # the failure's error comes from the ledger
    with Ledger(RunLayout(run.root).ledger) as led:
        err = led.get("broken", "preflight").error
    assert broken.stage == "preflight" and err in broken.error
    # pending: baseline scored, first grid alpha half generated: 1 of 6 candidates scored
    assert pending.stage == "sweep 1/6"
    assert pending.baseline_mean == pytest.approx(
        read_json(RunLayout(run.root).pair("pending").candidate(0.0).metrics)["mean_reward"]
    )
    assert pending.chosen_alpha is None and not pending.selected


def test_markdown(rows):
    md = report.render(rows, "markdown")
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + 4  # header, rule, 4 pairs
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)
    z = lines[2]
    assert "| 0.40 |" in z and "+0.270 [" in z and "0.911" in z and "152 → 212" in z
    assert "| none |" in lines[3]
    assert "failed (preflight)" in lines[4] and "pending (sweep 1/6)" in lines[5]
    assert "broken: failed at preflight: CheckpointError" in md  # the note under the table


def test_csv_and_json_round_trip(rows):
    parsed = list(csv.DictReader(io.StringIO(report.render(rows, "csv"))))
    assert [p["pair"] for p in parsed] == [r.pair for r in rows]
    assert float(parsed[0]["gain"]) == pytest.approx(rows[0].gain, rel=1e-12)
    assert parsed[1]["chosen_alpha"] == "" and parsed[2]["state"] == "failed"
    data = json.loads(report.render(rows, "json"))
    assert data[0]["chosen_alpha"] == 0.4 and data[1]["chosen_alpha"] is None
    assert data[3]["state"] == "pending" and data[0]["ci_high"] == rows[0].ci_high


def test_latex_and_terminal_table(rows):
    tex = report.render(rows, "latex")
    assert tex.startswith("\\begin{tabular}") and "\\bottomrule" in tex
    body = [ln for ln in tex.splitlines() if ln.endswith("\\\\")]
    assert len(body) == 5 and all(ln.count(" & ") == 12 for ln in body)
    assert "95\\% CI" in tex and "$\\to$" in tex and "--" in body[3]
    table = report.render(rows, "table")
    for name in ("zephyr-beta", "tulu2-7b", "broken", "pending", "+0.270"):
        assert name in table
    with pytest.raises(report.UsageError):
        report.render(rows, "html")  # type: ignore[arg-type]


def test_collect_many_adds_the_run_column(run, tmp_path):
    other = make_run(tmp_path / "second", name="second", seed=1)
    rows = report.collect_many([run.root, other.root])
    assert [r.run for r in rows] == ["demo"] * 4 + ["second"] * 4
    md = report.render(rows, "markdown")
    assert md.startswith("| Run | Pair |") and "| second | zephyr-beta |" in md
    assert report.render(rows, "latex").count(" & ") == 9 * 13  # header + 8 rows, 14 columns


def test_write_results(run):
    written = report.write_results(run.root)
    lay = RunLayout(run.root)
    for p in (
        lay.results("md"),
        lay.results("csv"),
        lay.results("json"),
        lay.summary_plot,
        lay.pair("zephyr-beta").sweep_plot,
        lay.pair("tulu2-7b").sweep_plot,
    ):
        assert p in written and p.stat().st_size > 0
    md = lay.results("md").read_text()
    assert "![Reward gain per pair](summary.png)" in md
    assert "(pairs/zephyr-beta/sweep.png)" in md and "(pairs/broken/sweep.png)" not in md
    assert "2 done (1 with a chosen alpha), 1 failed, 1 pending" in md
    assert read_json(lay.results("json"))[0]["pair"] == "zephyr-beta"


def test_not_a_run_folder(tmp_path):
    with pytest.raises(report.UsageError, match="not a run folder"):
        report.collect(tmp_path)
    with pytest.raises(report.UsageError, match="no run folder"):
        report.latest_run(tmp_path)


def test_cli_report(run, tmp_path, monkeypatch, capsys):
    from typer.testing import CliRunner

    runner = CliRunner()
    res = runner.invoke(app, ["report", str(run.root), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [r["pair"] for r in json.loads(res.stdout)][0] == "zephyr-beta"
    out = tmp_path / "t.csv"
    res = runner.invoke(app, ["report", str(run.root), "-f", "csv", "-o", str(out)])
    assert res.exit_code == 0 and out.read_text().startswith("pair,state,")
    # default: the latest run under ./outputs
    make_run(tmp_path / "outputs" / "latest", name="latest")
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["report", "-f", "markdown"])
    assert res.exit_code == 0 and "| zephyr-beta |" in res.stdout
    res = runner.invoke(app, ["report", str(run.root), "-f", "yaml"])
    assert res.exit_code != 0
