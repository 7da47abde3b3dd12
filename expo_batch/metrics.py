"""Per-candidate metrics from its records, and the degenerate-output detector. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Iterable

METRICS_VERSION = 2
"""Bumped when a metric's definition changes, so recorded candidates get their metrics again."""

# An answer is degenerate when it ends in a loop: one unit repeated at least LOOP_MIN_REPEATS
# times covering at least LOOP_MIN_CHARS characters (the runaway repetition the paper sees at
# large alpha), or when its word 4-grams repeat heavily.
LOOP_MIN_REPEATS = 3
LOOP_MIN_CHARS = 40
LOOP_MAX_UNIT = 200
NGRAM = 4
MIN_NGRAMS = 20
REPEAT_RATIO = 0.5
"""4-gram repetition that marks any answer degenerate (natural prose stays far below 0.2)."""
REPEAT_RATIO_TRUNCATED = 0.3
"""A lower bar for answers that hit max_tokens: never stopping while repeating is the failure."""
GARBLED_RATIO = 0.1
"""Share of replacement or control characters that marks token salad: the other collapse seen at
large alpha, where a byte-level model emits fragments that do not even decode."""
MIN_GARBLED_CHARS = 20


def garbled_ratio(text: str) -> float:
    """Share of characters that are U+FFFD (undecodable bytes) or control characters."""
    if not text:
        return 0.0
    bad = sum(ch == "\ufffd" or (ord(ch) < 32 and ch not in "\n\t\r") for ch in text)
    return bad / len(text)


def tail_loop(text: str, max_unit: int = LOOP_MAX_UNIT) -> tuple[int, int]:
    """(unit length, repeats) of the longest loop that ``text`` ends with; (0, 0) if none."""
    s = text.rstrip()
    best = (0, 0)
    n = len(s)
    for p in range(1, min(max_unit, n // 2) + 1):
        unit = s[n - p :]
        r = 1
        while (r + 1) * p <= n and s[n - (r + 1) * p : n - r * p] == unit:
            r += 1
        if r >= 2 and r * p > best[0] * best[1]:
            best = (p, r)
    return best


def ngram_repetition(text: str, n: int = NGRAM) -> tuple[float, int]:
    """(share of repeated word n-grams, number of n-grams). 0.0 for text shorter than n words."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0, 0
    return 1.0 - len(set(grams)) / len(grams), len(grams)


def is_degenerate(text: str, n_tokens: int | None = None, finish_reason: str | None = None) -> bool:
    """True for runaway answers: a repeated tail loop, heavy n-gram repetition, or token salad.

    ``n_tokens`` is accepted for the record's sake; the rules use the text and the finish reason.
    """
    if len(text) >= MIN_GARBLED_CHARS and garbled_ratio(text) >= GARBLED_RATIO:
        return True
    unit, repeats = tail_loop(text)
    if repeats >= LOOP_MIN_REPEATS and unit * repeats >= LOOP_MIN_CHARS:
        return True
    ratio, count = ngram_repetition(text)
    if count >= MIN_NGRAMS and ratio >= REPEAT_RATIO:
        return True
    return finish_reason == "length" and count >= MIN_NGRAMS and ratio >= REPEAT_RATIO_TRUNCATED


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _stderr(xs: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return math.sqrt(var / len(xs))


def candidate_metrics(generations: Iterable[dict], rewards: Iterable[dict]) -> dict:
    """Metrics of one candidate from its generations.jsonl and rewards.jsonl rows.

    Rewards are matched to generations by ``prompt_id`` (a reward without a generation is
    ignored). Returns n (scored answers), n_generations, mean_reward, stderr (of the mean),
    mean_length (tokens), truncation_rate (finish reason 'length'), degenerate_rate.
    """
    gens = {str(g["prompt_id"]): g for g in generations}
    rew = {str(r["prompt_id"]): float(r["reward"]) for r in rewards if str(r["prompt_id"]) in gens}
    values = list(rew.values())
    g_list = list(gens.values())
    n_gen = len(g_list)
    return {
        "n": len(values),
        "n_generations": n_gen,
        "mean_reward": _mean(values),
        "stderr": _stderr(values),
        "mean_length": _mean([float(g["n_tokens"]) for g in g_list]),
        "truncation_rate": (sum(g["finish_reason"] == "length" for g in g_list) / n_gen)
        if n_gen
        else None,
        "degenerate_rate": (
            sum(
                is_degenerate(g["answer"], g.get("n_tokens"), g.get("finish_reason"))
                for g in g_list
            )
            / n_gen
            if n_gen
            else None
        ),
    }
