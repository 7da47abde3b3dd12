"""Checks on the shipped tiny world (examples/tiny/), built by scripts/build_tiny_world.py."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "examples" / "tiny"
SCRIPT = ROOT / "scripts" / "build_tiny_world.py"
POLICIES = ("sft", "dpo-10", "dpo-20", "dpo-40", "dpo-100")


def _load_script():
    spec = importlib.util.spec_from_file_location("build_tiny_world", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the body runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world_script():
    return _load_script()


@pytest.fixture(scope="module")
def world() -> dict:
    return json.loads((WORLD / "world.json").read_text())


@pytest.fixture(scope="module")
def dev_prompts() -> list[dict]:
    lines = (WORLD / "prompts.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def reward_model():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(WORLD / "rm")
    model = AutoModelForSequenceClassification.from_pretrained(WORLD / "rm").eval()
    return model, tok


def _rewards(reward_model, prompt: str, answers: list[str]) -> list[float]:
    model, tok = reward_model
    seqs = [
        tok.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": a}],
            return_dict=False,
        )
        for a in answers
    ]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long()).logits
    return logits[:, 0].tolist()


def test_quality_is_graded_and_closed_form(world_script):
    q = world_script.quality
    prompt = "Name three fruits other than pear."
    assert world_script.parse_prompt(prompt) == ("fruits", 3, "pear")
    assert q(prompt, "apple, plum, grape.") == 1.25
    assert q(prompt, "apple, plum, grape") == 1.0  # no clean stop
    assert q(prompt, "apple, plum.") < q(prompt, "apple, plum, grape.")
    assert q(prompt, "apple, apple, grape.") < q(prompt, "apple, plum, grape.")
    assert q(prompt, "apple, pear, grape.") < q(prompt, "apple, plum, grape.")
    assert q(prompt, "apple, dog, grape.") < q(prompt, "apple, plum, grape.")
    assert q(prompt, "apple, plum, grape, " + ", ".join(["apple"] * 12)) == -1.0
    with pytest.raises(ValueError):
        q("What is the time?", "noon.")


def test_every_policy_and_rm_is_a_complete_hf_folder():
    for name in (*POLICIES, "rm"):
        folder = WORLD / name
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (folder / f).is_file(), f"{name}/{f} missing"
        assert (folder / "chat_template.jinja").is_file(), f"{name} has no chat template"
    for name in POLICIES:
        gen = json.loads((WORLD / name / "generation_config.json").read_text())
        assert gen["eos_token_id"] == 2 and gen["pad_token_id"] == 3


def test_policy_loads_and_generates_with_its_template(dev_prompts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(WORLD / "sft")
    model = AutoModelForCausalLM.from_pretrained(WORLD / "dpo-100").eval()
    assert model.config.head_dim == 32 and model.config.eos_token_id == tok.eos_token_id == 2
    msgs = [{"role": "user", "content": dev_prompts[0]["prompt"]}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert tok.decode(ids).endswith("<|assistant|>\n")
    torch.manual_seed(0)
    out = model.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False)
    text = tok.decode(out[0, len(ids) :], skip_special_tokens=True)
    assert "," in text or "." in text  # a list, not noise


def test_rm_has_its_own_template_and_single_bos(reward_model):
    model, tok = reward_model
    policy_tok_template = (WORLD / "sft" / "chat_template.jinja").read_text()
    assert tok.chat_template and tok.chat_template != policy_tok_template
    assert "[INST]" in tok.chat_template
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "List two colors."}, {"role": "assistant", "content": "red."}],
        return_dict=False,
    )
    assert ids.count(tok.bos_token_id) == 1 and ids[-1] == tok.eos_token_id


def test_rm_prefers_good_answers_on_heldout_prompts(world_script, reward_model, dev_prompts):
    """A clean answer beats a rambling one, one with foreign items, and an empty one."""
    ws = world_script
    for row in dev_prompts[:8]:
        category, n, exclude = ws.parse_prompt(row["prompt"])
        items = [x for x in ws.CATEGORIES[category] if x != exclude][:n]
        foreign = next(c for c in ws.CATEGORIES if c != category)
        good = ", ".join(items) + "."
        bad = [
            ", ".join(items + items * 3),  # rambles, never stops
            ", ".join(ws.CATEGORIES[foreign][:n]) + ".",  # wrong category
            "",
        ]
        assert all(ws.quality(row["prompt"], b) < ws.quality(row["prompt"], good) for b in bad)
        good_r, *bad_r = _rewards(reward_model, row["prompt"], [good, *bad])
        assert all(good_r > b for b in bad_r), (row["prompt"], good_r, bad_r)


def test_pairs_are_shape_compatible_and_move_with_training():
    from safetensors.torch import load_file

    sft = load_file(WORLD / "sft" / "model.safetensors")
    norms = {}
    for name in POLICIES[1:]:
        aligned = load_file(WORLD / name / "model.safetensors")
        assert aligned.keys() == sft.keys()
        for key, t in aligned.items():
            assert t.shape == sft[key].shape and t.dtype == sft[key].dtype == torch.float32, key
        norms[name] = sum(float((aligned[k] - sft[k]).norm() ** 2) for k in sft) ** 0.5
    # one DPO run saved at 10/20/40/100%: the checkpoints move further from SFT as it trains
    assert 0 < norms["dpo-10"] < norms["dpo-20"] < norms["dpo-40"] < norms["dpo-100"]


def test_world_json_numbers_are_sane(world, dev_prompts, world_script):
    assert world["rm"]["heldout_accuracy"] >= 0.8
    assert world["rm"]["heldout_accuracy_gap_ge_0.5"] >= 0.85
    assert world["sft"]["loss_last_50"] < world["sft"]["loss_first_50"]
    ckpts = world["dpo"]["checkpoints"]
    assert [ckpts[n]["fraction_of_epoch"] for n in POLICIES[1:]] == pytest.approx(
        [0.1, 0.2, 0.4, 1.0], abs=0.01
    )
    assert world["task"]["dev_prompts"] == len(dev_prompts) == 64
    ids = [row["id"] for row in dev_prompts]
    assert len(set(ids)) == len(ids)
    assert all(world_script.parse_prompt(row["prompt"]) for row in dev_prompts)


def test_dpo_improves_on_sft_as_recorded(world):
    """The declared criterion (README): DPO-100 beats SFT in true quality and in RM reward."""
    sampled = world["sanity"]["sampled"]
    sft, dpo = sampled["sft"], sampled["dpo-100"]
    assert dpo["quality"] - sft["quality"] >= 0.05
    two_se = 2 * (sft["rm_reward_se"] ** 2 + dpo["rm_reward_se"] ** 2) ** 0.5
    assert dpo["rm_reward"] - sft["rm_reward"] >= two_se
    verdict = world["sanity"]["criterion"]
    assert verdict["quality_gain_ge_0.05"] and verdict["reward_gain_ge_2se"]
    assert verdict["distance_increasing"]


def test_recorded_sampled_figures_are_reproducible(world, dev_prompts, world_script):
    """Sample SFT and DPO-100 on the dev prompts as registry.yaml does; same figures as recorded."""
    from expo_batch.generate import get_backend
    from expo_batch.manifest import SamplingConfig, ScorerConfig
    from expo_batch.prompts import render_prompt_ids
    from expo_batch.score import load_scorer

    prompts = [row["prompt"] for row in dev_prompts]
    sampling = SamplingConfig(**world_script.EVAL_SAMPLING)
    scorer = load_scorer(ScorerConfig(model=str(WORLD / "rm"), batch_size=8), device="cpu")
    for name in ("sft", "dpo-100"):
        backend = get_backend("transformers")(WORLD / name, WORLD / name, device="cpu")
        ids = [render_prompt_ids(backend.tokenizer, p) for p in prompts]
        texts = [g.text for g in backend.generate(ids, sampling, [2])]
        backend.close()
        quality = sum(world_script.quality(p, a) for p, a in zip(prompts, texts, strict=True))
        reward = sum(scorer.score(prompts, texts))
        recorded = world["sanity"]["sampled"][name]
        assert quality / len(prompts) == pytest.approx(recorded["quality"], abs=1e-4), name
        assert reward / len(prompts) == pytest.approx(recorded["rm_reward"], abs=1e-3), name


def test_world_is_small_enough_to_commit():
    total = sum(f.stat().st_size for f in WORLD.rglob("*") if f.is_file())
    assert total < 8 * 1024 * 1024, total


def test_registry_pairs_point_at_shipped_folders():
    from ruamel.yaml import YAML

    reg = YAML(typ="safe").load(WORLD / "registry.yaml")
    assert (WORLD / reg["defaults"]["prompts"]["path"]).is_file()
    assert (WORLD / reg["defaults"]["scorer"]["model"]).is_dir()
    names = [p["name"] for p in reg["pairs"]]
    assert names == ["tiny-dpo-10", "tiny-dpo-20", "tiny-dpo-40", "tiny-dpo-100"]
    for pair in reg["pairs"]:
        assert (WORLD / pair["sft"]).resolve() == (WORLD / "sft").resolve()
        assert (WORLD / pair["aligned"] / "model.safetensors").is_file()
        assert pair["stop_token_ids"] == [2]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_build_reproduces_the_shipped_world(tmp_path):
    """Rebuild from scratch (a few minutes on 2 cores) and compare with what is shipped."""
    out = tmp_path / "tiny"
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True)
    for name in (*POLICIES, "rm"):
        rebuilt, shipped = out / name / "model.safetensors", WORLD / name / "model.safetensors"
        assert _sha256(rebuilt) == _sha256(shipped), name
    for f in ("world.json", "prompts.jsonl", "sft/tokenizer.json", "rm/tokenizer.json"):
        assert (out / f).read_text() == (WORLD / f).read_text(), f


def test_bundled_example_runs_end_to_end(tmp_path, capsys):
    """The README's demo: the shipped registry through `expo-batch run`, then `report`."""
    from expo_batch.io import read_json
    from tests.cli import cli

    assert cli("run", str(WORLD / "registry.yaml"), "--output", str(tmp_path)) == 0
    run_dir = tmp_path / "tiny"
    capsys.readouterr()
    assert cli("report", str(run_dir), "--format", "csv") == 0
    table = capsys.readouterr().out
    for k in (10, 20, 40, 100):
        assert f"tiny-dpo-{k}" in table
        sweep = read_json(run_dir / "pairs" / f"tiny-dpo-{k}" / "sweep.json")
        assert sweep["candidates"][0]["alpha"] == 0.0 and sweep["candidates"][0]["n"] == 32
        chosen = sweep["selection"]["chosen_alpha"]
        assert (run_dir / "pairs" / f"tiny-dpo-{k}" / "model").exists() == (chosen is not None)
