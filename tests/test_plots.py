"""Plots are written as real, non-trivial PNGs for every shape of sweep a run can produce."""

from __future__ import annotations

import pytest

from expo_batch import plots, report
from expo_batch.io import read_json
from tests.fake_run import make_run

PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG
    # IHDR: width and height, big-endian, right after the signature and chunk header
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), len(data)


def _cand(alpha, mean, stderr=0.1, length=100.0):
    return {
        "alpha": alpha,
        "n": 8,
        "mean_reward": mean,
        "stderr": stderr,
        "mean_length": length,
        "truncation_rate": 0.0,
        "degenerate_rate": 0.0,
    }


@pytest.mark.parametrize(
    "sweep",
    [
        pytest.param(
            {
                "pair": "one",
                "candidates": [_cand(0.0, 1.0)],
                "selection": {"chosen_alpha": None, "reason": "no alpha beats the baseline"},
            },
            id="baseline-only",
        ),
        pytest.param(
            {
                "pair": "two",
                "candidates": [_cand(0.0, 1.0), _cand(0.3, 1.4)],
                "selection": {"chosen_alpha": 0.3, "reason": "highest mean reward"},
            },
            id="one-candidate-chosen",
        ),
        pytest.param(
            {
                "pair": "neg",
                "candidates": [
                    _cand(-0.5, 0.2),
                    _cand(-0.2, 0.8),
                    _cand(0.0, 1.0),
                    _cand(2.0, 0.1, length=900),
                ],
                "selection": {
                    "chosen_alpha": None,
                    "reason": "no alpha beats the baseline",
                    "rejected": [{"alpha": 2.0, "reason": "truncation"}],
                },
            },
            id="negative-alphas-none-chosen",
        ),
        pytest.param(
            {
                "pair": "nolen",
                "candidates": [
                    _cand(0.0, 1.0) | {"mean_length": None},
                    _cand(0.1, 1.1) | {"mean_length": None},
                ],
                "selection": {},
            },
            id="no-lengths-no-selection",
        ),
    ],
)
def test_plot_sweep_shapes(sweep, tmp_path):
    path = plots.plot_sweep(sweep, tmp_path / "sub" / "sweep.png", paper_alpha=0.3)
    w, h, size = _png_size(path)
    assert w > 300 and h > 200 and size > 10_000
    assert not list(path.parent.glob(".*"))  # no temp file left behind


def test_plot_sweep_draws_more_for_more(tmp_path):
    """The plot reflects its input: a chosen alpha and the paper line add ink (bytes differ)."""
    base = {
        "pair": "p",
        "candidates": [_cand(0.0, 1.0), _cand(0.2, 1.3), _cand(0.4, 1.2)],
        "selection": {"chosen_alpha": None, "reason": "x"},
    }
    a = plots.plot_sweep(base, tmp_path / "a.png").read_bytes()
    chosen = base | {"selection": {"chosen_alpha": 0.2, "reason": "highest mean reward"}}
    b = plots.plot_sweep(chosen, tmp_path / "b.png", paper_alpha=0.4).read_bytes()
    assert a != b


def test_plot_summary_from_a_run(tmp_path):
    run = make_run(tmp_path / "demo")
    rows = report.collect(run.root)
    path = plots.plot_summary(rows, tmp_path / "summary.png", title="demo")
    w, h, size = _png_size(path)
    assert size > 10_000 and h > 200
    # no gains at all (only pending/failed pairs) still draws a figure
    empty = [r for r in rows if r.gain is None]
    assert _png_size(plots.plot_summary(empty, tmp_path / "empty.png"))[2] > 5_000
    # a real sweep.json from the run, with its paper alpha
    sweep = read_json(run.layout.pair("zephyr-beta").sweep)
    assert _png_size(plots.plot_sweep(sweep, tmp_path / "z.png", paper_alpha=0.1))[2] > 10_000
