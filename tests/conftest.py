"""Shared fixtures: tiny real models built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import tiny


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return tiny.build_tokenizer()


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory, tiny_tokenizer) -> tuple[Path, Path]:
    """(sft_dir, aligned_dir): two Llama checkpoints a small delta apart, fp32 safetensors."""
    root = tmp_path_factory.mktemp("tiny_pair")
    sft = tiny.build_policy(seed=0)
    aligned = tiny.perturbed(sft, scale=0.05, seed=1)
    return (
        tiny.save_policy(sft, tiny_tokenizer, root / "sft"),
        tiny.save_policy(aligned, tiny_tokenizer, root / "aligned"),
    )


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory) -> Path:
    return tiny.build_reward_model(tmp_path_factory.mktemp("tiny_rm") / "rm")
