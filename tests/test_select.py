"""The selection rule: the paper's choice, the none case, the guards, the bootstrap interval."""

from __future__ import annotations

import pytest

from expo_batch.manifest import SelectionConfig
from expo_batch.select import paired_bootstrap_ci, refine_alphas, select_alpha


def run(means: dict[float, float], n: int = 50, noise: float = 0.1, metric_overrides=None):
    import random

    rng = random.Random(0)
    rewards = {a: {f"p{i}": m + rng.gauss(0, noise) for i in range(n)} for a, m in means.items()}
    metrics = {}
    for a, r in rewards.items():
        metrics[a] = {
            "mean_reward": sum(r.values()) / n,
            "truncation_rate": 0.0,
            "degenerate_rate": 0.0,
        }
        metrics[a].update((metric_overrides or {}).get(a, {}))
    return rewards, metrics


def test_picks_highest_mean_with_ci_around_the_gain():
    rewards, metrics = run({0.0: 1.0, 0.1: 1.2, 0.3: 1.5, 0.5: 1.1})
    sel = select_alpha(rewards, metrics, SelectionConfig())
    assert sel["chosen_alpha"] == 0.3
    assert sel["gain"] == pytest.approx(metrics[0.3]["mean_reward"] - metrics[0.0]["mean_reward"])
    assert sel["ci_low"] < sel["gain"] < sel["ci_high"]
    assert sel["ci_low"] > 0.3  # a 0.5 gain with noise 0.1 on 50 prompts is clearly positive


def test_none_when_no_alpha_beats_baseline():
    rewards, metrics = run({0.0: 2.0, 0.1: 1.9, 0.2: 1.5})
    sel = select_alpha(rewards, metrics, SelectionConfig())
    assert sel["chosen_alpha"] is None
    assert "no alpha beats the baseline" in sel["reason"]
    assert sel["gain"] < 0


def test_min_gain_is_respected():
    rewards, metrics = run({0.0: 1.0, 0.1: 1.05}, noise=0.0)
    assert select_alpha(rewards, metrics, SelectionConfig(min_gain=0.1))["chosen_alpha"] is None
    assert select_alpha(rewards, metrics, SelectionConfig(min_gain=0.0))["chosen_alpha"] == 0.1


def test_guard_rejects_reward_bought_with_runaway_answers():
    rewards, metrics = run(
        {0.0: 1.0, 0.3: 1.3, 0.5: 1.6}, metric_overrides={0.5: {"truncation_rate": 0.4}}
    )
    sel = select_alpha(rewards, metrics, SelectionConfig(max_truncation_increase=0.1))
    assert sel["chosen_alpha"] == 0.3
    assert sel["rejected"][0]["alpha"] == 0.5 and "truncation rate" in sel["rejected"][0]["reason"]
    assert select_alpha(rewards, metrics, SelectionConfig())["chosen_alpha"] == 0.5


def test_ties_go_to_the_smaller_alpha():
    rewards, metrics = run({0.0: 1.0, 0.2: 1.5, 0.4: 1.5}, noise=0.0)
    assert select_alpha(rewards, metrics, SelectionConfig())["chosen_alpha"] == 0.2


def test_bootstrap_is_paired_and_seeded():
    base = [float(i) for i in range(40)]  # large spread between prompts...
    cand = [b + 0.5 for b in base]  # ...but a constant gain on each prompt
    lo, hi = paired_bootstrap_ci(base, cand, samples=500)
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    a = paired_bootstrap_ci(base, [b + (i % 3) for i, b in enumerate(base)], seed=1)
    assert a == paired_bootstrap_ci(base, [b + (i % 3) for i, b in enumerate(base)], seed=1)
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0], [1.0, 2.0])


def test_refine_steps_around_best_skipping_done():
    assert refine_alphas([0.1, 0.2, 0.3], 0.3, 0.05) == [0.25, 0.35]
    assert refine_alphas([0.1, 0.2, 0.25, 0.3, 0.35], 0.3, 0.05) == []
    assert refine_alphas([0.1], 0.1, 0.1) == [0.2]  # never alpha 0 again
