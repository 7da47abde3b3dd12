#!/usr/bin/env python
"""Build the tiny real world under examples/tiny/: a tokenizer, an SFT policy, DPO checkpoints at
10/20/40/100% of one epoch, a reward model, held-out dev prompts and a registry.

The task ("list N items of a category") has a quality score known in closed form (`quality`), so
the reward model can really learn it and every number can be checked against the truth. The SFT
data mixes answers of every quality (too few or too many items, wrong or repeated items, rambling
without stopping, word salad), so the SFT policy is mediocre and DPO has somewhere to go.

DPO pairs are made on-policy (8 SFT samples per prompt, best against worst by `quality`) and DPO
is a compact loss written here (reference = the frozen SFT policy, plus an NLL term on the chosen
answers that keeps a policy this small from collapsing), not TRL, to keep the tool free of that
dependency. world.json records every figure, incl. the README's success criterion.

Usage:
    python scripts/build_tiny_world.py            # writes examples/tiny/
    python scripts/build_tiny_world.py --out DIR  # writes elsewhere (e.g. to compare two builds)

Importable: `quality(prompt, answer)` and `parse_prompt(prompt)` score any answer in closed form.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SEED = 1234
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "examples" / "tiny"

# ----------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------

CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruits": (
        "apple",
        "pear",
        "plum",
        "grape",
        "lemon",
        "mango",
        "peach",
        "cherry",
        "melon",
        "lime",
    ),
    "animals": ("dog", "cat", "horse", "cow", "sheep", "goat", "mouse", "lion", "tiger", "bear"),
    "colors": (
        "red",
        "blue",
        "green",
        "yellow",
        "black",
        "white",
        "pink",
        "brown",
        "purple",
        "gray",
    ),
    "tools": (
        "hammer",
        "saw",
        "drill",
        "wrench",
        "shovel",
        "rake",
        "axe",
        "chisel",
        "pliers",
        "ladder",
    ),
    "vehicles": ("car", "bus", "truck", "train", "bike", "boat", "plane", "ship", "van", "taxi"),
    "body parts": ("hand", "foot", "head", "knee", "nose", "ear", "eye", "arm", "leg", "neck"),
    "drinks": ("tea", "coffee", "milk", "juice", "water", "soda", "wine", "beer", "cocoa", "cider"),
    "instruments": (
        "piano",
        "guitar",
        "drum",
        "flute",
        "violin",
        "harp",
        "trumpet",
        "cello",
        "banjo",
        "organ",
    ),
}
ALL_ITEMS = tuple(item for items in CATEGORIES.values() for item in items)
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
WORD_NUMBERS = {w: n for n, w in NUMBER_WORDS.items()}
PHRASINGS = (
    "List {n} {cat}{excl}.",
    "Name {n} {cat}{excl}.",
    "Give me {n} {cat}{excl}.",
    "Please list {n} {cat}{excl}.",
    "Can you name {n} {cat}{excl}?",
    "Write {n} {cat}{excl}, separated by commas.",
)
_PROMPT_RE = re.compile(
    r"^(?:List|Name|Give me|Please list|Can you name|Write) (?P<n>\w+) (?P<cat>[a-z ]+?)"
    r"(?: other than (?P<excl>[a-z]+))?(?:\.|\?|, separated by commas\.)$"
)


@dataclass(frozen=True)
class Spec:
    """One prompt: list ``n`` items of ``category``, never ``exclude``."""

    category: str
    n: int
    exclude: str | None
    phrasing: int
    digits: bool


def render_prompt(spec: Spec) -> str:
    n = str(spec.n) if spec.digits else NUMBER_WORDS[spec.n]
    excl = f" other than {spec.exclude}" if spec.exclude else ""
    return PHRASINGS[spec.phrasing].format(n=n, cat=spec.category, excl=excl)


def parse_prompt(prompt: str) -> tuple[str, int, str | None] | None:
    """(category, n, excluded item) of a task prompt, or None if it is not one."""
    m = _PROMPT_RE.match(prompt.strip())
    if not m or m["cat"] not in CATEGORIES:
        return None
    n = int(m["n"]) if m["n"].isdigit() else WORD_NUMBERS.get(m["n"])
    if n is None:
        return None
    return m["cat"], n, m["excl"]


def quality(prompt: str, answer: str) -> float:
    """The closed-form quality of ``answer`` to ``prompt``, in [-1, 1.25].

    Items are the comma-separated words before the first period. Each of the first ``n`` new,
    correct items earns 1/n; every other item (wrong category, the excluded one, a repeat, one
    beyond n, or a non-item) costs 0.5/n; stopping cleanly (one list, one period, nothing after)
    earns 0.25. A perfect answer scores 1.25; rambling and repetition drive it to -1.
    """
    spec = parse_prompt(prompt)
    if spec is None:
        raise ValueError(f"not a task prompt: {prompt!r}")
    category, n, exclude = spec
    body, dot, tail = answer.strip().partition(".")
    items = [w.strip() for w in body.split(",") if w.strip()]
    allowed = set(CATEGORIES[category]) - {exclude}
    seen: set[str] = set()
    good = bad = 0
    for item in items:
        if item in allowed and item not in seen and good < n:
            seen.add(item)
            good += 1
        else:
            bad += 1
    clean = bool(items) and dot == "." and not tail.strip()
    score = (good - 0.5 * bad) / n + (0.25 if clean else 0.0)
    return max(-1.0, min(1.25, score))


def all_specs() -> list[Spec]:
    specs = []
    for category, items in CATEGORIES.items():
        for n in NUMBER_WORDS:
            for phrasing in range(len(PHRASINGS)):
                for digits in (False, True):
                    for exclude in (None, *items):
                        specs.append(Spec(category, n, exclude, phrasing, digits))
    return specs


_FILLER = tuple(
    "list name give me please can you write other than separated by commas and or the a".split()
)


def render_answer(items: list[str], stop: bool) -> str:
    return ", ".join(items) + ("." if stop else "")


def sample_answer(spec: Spec, rng: random.Random) -> str:
    """An answer of random quality: a "skill" in [0, 1] sets how often each mistake happens."""
    if rng.random() < 0.04:  # word salad: what a broken policy emits
        vocab = ALL_ITEMS + _FILLER + tuple(",.?")
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(2, 24)))
    skill = rng.random()
    pool = [x for x in CATEGORIES[spec.category] if x != spec.exclude]
    rng.shuffle(pool)
    k = spec.n
    if rng.random() < 0.6 * (1 - skill):
        k = max(1, k + rng.choice((-2, -1, 1, 1, 2, 3)))
    items: list[str] = []
    for _ in range(k):
        r = rng.random()
        p_err = 0.45 * (1 - skill)
        if r < p_err * 0.45:
            other = rng.choice([c for c in CATEGORIES if c != spec.category])
            items.append(rng.choice(CATEGORIES[other]))
        elif r < p_err * 0.8 and items:
            items.append(rng.choice(items))
        elif r < p_err and spec.exclude:
            items.append(spec.exclude)
        else:
            fresh = [x for x in pool if x not in items]
            items.append(fresh[0] if fresh else rng.choice(pool))
    ending = rng.random()
    if ending < 0.55 + 0.45 * skill:
        return render_answer(items, stop=True)
    if ending < 0.8 + 0.2 * skill:
        return render_answer(items, stop=False)
    # rambles: keeps cycling through what it said, never closes the list
    extra = [items[i % len(items)] for i in range(rng.randint(4, 12))]
    return render_answer(items + extra, stop=False)


def edit_answer(spec: Spec, answer: str, rng: random.Random) -> str:
    """One small edit of ``answer`` (a repeat, a wrong item, one too many or too few, no stop,
    rambling): with the original it makes a minimal pair that isolates one mistake."""
    body, dot, _ = answer.partition(".")
    items = [w.strip() for w in body.split(",") if w.strip()] or ["?"]
    stop = dot == "."
    pool = [x for x in CATEGORIES[spec.category] if x != spec.exclude and x not in items]
    op = rng.choice(("repeat", "repeat", "wrong", "exclude", "extra", "drop", "unstop", "ramble"))
    i = rng.randrange(len(items))
    if op == "repeat" and len(items) > 1:
        j = rng.choice([j for j in range(len(items)) if j != i])
        items[i] = items[j]
    elif op == "wrong":
        other = rng.choice([c for c in CATEGORIES if c != spec.category])
        items[i] = rng.choice(CATEGORIES[other])
    elif op == "exclude" and spec.exclude:
        items[i] = spec.exclude
    elif op == "extra" and pool:
        items.append(rng.choice(pool))
    elif op == "drop" and len(items) > 1:
        del items[i]
    elif op == "unstop":
        stop = False
    else:
        items += [items[k % len(items)] for k in range(rng.randint(4, 12))]
        stop = False
    return render_answer(items, stop)


def split_specs(rng: random.Random, n_dev: int) -> tuple[list[Spec], list[Spec]]:
    specs = all_specs()
    rng.shuffle(specs)
    return specs[n_dev:], specs[:n_dev]


def preference_pairs(
    specs: list[Spec], count: int, rng: random.Random, min_gap: float
) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) triples whose closed-form qualities differ by >= min_gap.

    Half are two independent answers, half an answer and a small edit of it, so that every kind
    of mistake (repeats above all, which a small model finds hard to see) is isolated somewhere.
    """
    pairs = []
    while len(pairs) < count:
        spec = rng.choice(specs)
        prompt = render_prompt(spec)
        a = sample_answer(spec, rng)
        b = sample_answer(spec, rng) if rng.random() < 0.5 else edit_answer(spec, a, rng)
        qa, qb = quality(prompt, a), quality(prompt, b)
        if abs(qa - qb) < min_gap:
            continue
        pairs.append((prompt, a, b) if qa > qb else (prompt, b, a))
    return pairs


def targeted_pairs(specs: list[Spec], count: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """Minimal pairs for what a small reward model finds hardest to see: a repeated item and one
    item too many (or too few), each against the same list without that mistake."""
    pairs = []
    while len(pairs) < count:
        spec = rng.choice(specs)
        prompt = render_prompt(spec)
        pool = [x for x in CATEGORIES[spec.category] if x != spec.exclude]
        rng.shuffle(pool)
        items = pool[: max(1, spec.n + rng.choice((-1, 0, 0, 0)))]
        bad = list(items)
        op = rng.choice(("repeat", "repeat", "repeat_more", "extra", "extra_repeat", "drop"))
        if op == "repeat" and len(bad) > 1:
            i = rng.randrange(1, len(bad))
            bad[i] = rng.choice(bad[:i])
        elif op == "repeat_more":
            bad.append(rng.choice(bad))
        elif op == "extra" and len(pool) > len(bad):
            bad.append(pool[len(bad)])
        elif op == "extra_repeat":
            bad += [rng.choice(bad) for _ in range(rng.randint(2, 3))]
        elif op == "drop" and len(bad) > 1:
            del bad[rng.randrange(len(bad))]
        good, worse = render_answer(items, True), render_answer(bad, True)
        if quality(prompt, good) - quality(prompt, worse) >= 0.05:
            pairs.append((prompt, good, worse))
    return pairs


def onpolicy_pairs(
    model,
    tok,
    specs: list[Spec],
    n_prompts: int,
    k: int,
    seed: int,
    min_gap: float,
    temperature: float = 0.7,
    top_p: float = 0.9,
    top_k: int = 50,
    all_pairs: bool = False,
) -> tuple[list[tuple[str, str, str]], dict]:
    """Preference pairs made the way real DPO data is: ``k`` samples per prompt from ``model``,
    labelled by the closed-form ``quality``.

    With ``all_pairs`` every two samples whose qualities differ by >= ``min_gap`` make a pair
    (for the reward model); otherwise only the best and the worst sample of each prompt (for DPO).
    """
    rng = random.Random(seed)
    prompts = [render_prompt(rng.choice(specs)) for _ in range(n_prompts)]
    flat = [p for p in prompts for _ in range(k)]
    gens = generate(model, tok, flat, True, seed, temperature=temperature, top_p=top_p, top_k=top_k)
    pairs = []
    qualities = []
    for i, prompt in enumerate(prompts):
        answers = [g[0] for g in gens[i * k : (i + 1) * k]]
        scored = sorted(((quality(prompt, a), a) for a in dict.fromkeys(answers)), reverse=True)
        qualities += [quality(prompt, a) for a in answers]
        if all_pairs:
            for x in range(len(scored)):
                for y in range(x + 1, len(scored)):
                    if scored[x][0] - scored[y][0] >= min_gap:
                        pairs.append((prompt, scored[x][1], scored[y][1]))
        elif len(scored) > 1 and scored[0][0] - scored[-1][0] >= min_gap:
            pairs.append((prompt, scored[0][1], scored[-1][1]))
    stats = {
        "prompts": n_prompts,
        "samples_per_prompt": k,
        "sampling": {"temperature": temperature, "top_p": top_p, "top_k": top_k},
        "min_gap": min_gap,
        "sample_mean_quality": r6(sum(qualities) / len(qualities)),
        "pairs": len(pairs),
    }
    if pairs:
        gaps = [quality(p, c) - quality(p, r) for p, c, r in pairs]
        stats["pair_mean_gap"] = r6(sum(gaps) / len(gaps))
    return pairs, stats


# ----------------------------------------------------------------------------------------------
# Tokenizer and models
# ----------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
BOS_ID, EOS_ID, PAD_ID = 1, 2, 3

POLICY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% else %}<|system|>\n{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Reward models have their own template, as real ones do (this one is Mistral-like).
RM_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)

POLICY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,  # vLLM's CPU attention accepts 32
    max_position_embeddings=256,
)
VOCAB_SIZE = 512
MAX_NEW_TOKENS = 48
# How registry.yaml samples, and so how the sanity figures in world.json are measured.
EVAL_SAMPLING = dict(
    temperature=0.7,
    top_p=0.9,
    top_k=50,
    presence_penalty=0.1,
    frequency_penalty=0.1,
    max_tokens=MAX_NEW_TOKENS,
    seed=42,
)


def build_tokenizer(corpus: list[str], chat_template: str):
    """Byte-level BPE trained on the task text; adds BOS on plain encode, like Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        add_eos_token=False,
    )
    fast.chat_template = chat_template
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    return fast


def llama_config(vocab_size: int, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        **POLICY_SHAPE,
        **extra,
    )


def prompt_ids(tok, prompt: str) -> list[int]:
    msgs = [{"role": "user", "content": prompt}]
    return list(tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False))


def answer_ids(tok, answer: str) -> list[int]:
    return tok.encode(answer, add_special_tokens=False) + [EOS_ID]


def rm_ids(rm_tok, prompt: str, answer: str) -> list[int]:
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return list(rm_tok.apply_chat_template(msgs, return_dict=False))


def pad_right(seqs: list[list[int]], value: int):
    import torch

    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def lm_batch(examples: list[tuple[list[int], list[int]]]):
    """(input_ids, attention_mask, labels) with the loss on answer tokens only."""
    ids = pad_right([p + a for p, a in examples], PAD_ID)
    labels = pad_right([[-100] * len(p) + a for p, a in examples], -100)
    mask = pad_right([[1] * (len(p) + len(a)) for p, a in examples], 0)
    return ids, mask, labels


def sequence_logps(model, batch):
    """Sum of log-probabilities of the answer tokens of each sequence."""
    import torch

    ids, mask, labels = batch
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    keep = target != -100
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (picked * keep).sum(-1)


def bucketed_batches(lengths: list[int], batch: int, g) -> list[list[int]]:
    """Shuffled full batches of similar lengths (less padding, same examples every epoch)."""
    import torch

    order = torch.randperm(len(lengths), generator=g).tolist()
    order = order[: len(order) // batch * batch]
    window = batch * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[k : k + batch] for k in range(0, len(chunk), batch)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def lr_at(step: int, total: int, peak: float, warmup: int, final_frac: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(opt, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def r6(x: float) -> float:
    return float(f"{x:.6g}")


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def train_sft(tok, train_specs, rng, seed: int, log) -> tuple[object, dict]:
    import torch
    from transformers import LlamaForCausalLM

    n_examples, epochs, batch, peak = 8000, 2, 64, 3e-3
    data = []
    for _ in range(n_examples):
        spec = rng.choice(train_specs)
        prompt = render_prompt(spec)
        answer = sample_answer(spec, rng)
        data.append((prompt, answer))
    examples = [(prompt_ids(tok, p), answer_ids(tok, a)) for p, a in data]
    data_quality = sum(quality(p, a) for p, a in data) / len(data)

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(len(tok)))
    opt = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=0.01, betas=(0.9, 0.98))
    steps_per_epoch = len(examples) // batch
    total = epochs * steps_per_epoch
    g = torch.Generator().manual_seed(seed)
    lengths = [len(p) + len(a) for p, a in examples]
    losses, step = [], 0
    model.train()
    for _ in range(epochs):
        for idx in bucketed_batches(lengths, batch, g):
            chunk = [examples[i] for i in idx]
            ids, mask, labels = lm_batch(chunk)
            set_lr(opt, lr_at(step, total, peak, warmup=20, final_frac=0.1))
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0:
                log(f"  sft step {step}/{total} loss {sum(losses[-50:]) / 50:.4f}")
    model.eval()
    stats = {
        "examples": n_examples,
        "epochs": epochs,
        "batch_size": batch,
        "lr": peak,
        "steps": total,
        "loss_first_50": r6(sum(losses[:50]) / 50),
        "loss_last_50": r6(sum(losses[-50:]) / 50),
        "data_mean_quality": r6(data_quality),
    }
    return model, stats


RM_RECIPE = dict(epochs=3, batch_size=32, lr=1e-3)


def train_rm(
    sft, rm_tok, train_pairs, heldout_pairs, seed: int, log, recipe=None
) -> tuple[object, dict]:
    """Bradley-Terry reward model, its backbone initialised from the SFT policy (as real RMs)."""
    import torch
    from transformers import LlamaForSequenceClassification

    recipe = RM_RECIPE | (recipe or {})
    epochs, batch, peak = recipe["epochs"], recipe["batch_size"], recipe["lr"]
    torch.manual_seed(seed + 1)
    rm = LlamaForSequenceClassification(llama_config(sft.config.vocab_size, num_labels=1))
    rm.model.load_state_dict(sft.model.state_dict())
    torch.nn.init.normal_(rm.score.weight, std=0.02)

    enc = [(rm_ids(rm_tok, p, c), rm_ids(rm_tok, p, r)) for p, c, r in train_pairs]
    opt = torch.optim.AdamW(rm.parameters(), lr=peak, weight_decay=0.01, betas=(0.9, 0.98))
    steps_per_epoch = len(enc) // batch
    total = epochs * steps_per_epoch
    g = torch.Generator().manual_seed(seed + 1)
    lengths = [max(len(c), len(r)) for c, r in enc]
    losses, step = [], 0
    rm.train()
    for _ in range(epochs):
        for idx in bucketed_batches(lengths, batch, g):
            chunk = [enc[i] for i in idx]
            seqs = [c for c, _ in chunk] + [r for _, r in chunk]
            ids = pad_right(seqs, PAD_ID)
            rewards = rm(input_ids=ids, attention_mask=(ids != PAD_ID).long()).logits[:, 0]
            loss = -torch.nn.functional.logsigmoid(rewards[: len(chunk)] - rewards[len(chunk) :])
            loss = loss.mean()
            set_lr(opt, lr_at(step, total, peak, warmup=20, final_frac=0.1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0:
                log(f"  rm step {step}/{total} loss {sum(losses[-50:]) / 50:.4f}")
    rm.eval()

    chosen = score(rm, rm_tok, [(p, c) for p, c, _ in heldout_pairs])
    rejected = score(rm, rm_tok, [(p, r) for p, _, r in heldout_pairs])
    gaps = [quality(p, c) - quality(p, r) for p, c, r in heldout_pairs]
    right = [a > b for a, b in zip(chosen, rejected, strict=True)]
    clear = [ok for ok, gap in zip(right, gaps, strict=True) if gap >= 0.5]
    stats = {
        "epochs": epochs,
        "batch_size": batch,
        "lr": peak,
        "steps": total,
        "train_pairs": len(train_pairs),
        "loss_last_50": r6(sum(losses[-50:]) / 50),
        "heldout_pairs": len(heldout_pairs),
        "heldout_accuracy": r6(sum(right) / len(right)),
        "heldout_pairs_gap_ge_0.5": len(clear),
        "heldout_accuracy_gap_ge_0.5": r6(sum(clear) / max(1, len(clear))),
    }
    return rm, stats


def score(rm, rm_tok, items: list[tuple[str, str]], batch: int = 64) -> list[float]:
    import torch

    out: list[float] = []
    with torch.no_grad():
        for i in range(0, len(items), batch):
            ids = pad_right([rm_ids(rm_tok, p, a) for p, a in items[i : i + batch]], PAD_ID)
            logits = rm(input_ids=ids, attention_mask=(ids != PAD_ID).long()).logits[:, 0]
            out.extend(logits.float().tolist())
    return out


DPO_RECIPE = dict(beta=0.3, batch_size=16, lr=2e-4, warmup_steps=8, nll_weight=1.0)


def train_dpo(sft, tok, pairs, seed: int, fractions: dict[str, float], log, recipe=None):
    """One DPO run over one epoch of ``pairs``; yields (name, model copy, stats) at each fraction.

    The reference is the frozen SFT policy; its log-probabilities are computed once up front.
    """
    import copy

    import torch

    recipe = DPO_RECIPE | (recipe or {})
    beta, batch, peak, warmup = (recipe[k] for k in ("beta", "batch_size", "lr", "warmup_steps"))
    nll_weight = recipe["nll_weight"]
    enc = [(prompt_ids(tok, p), answer_ids(tok, c), answer_ids(tok, r)) for p, c, r in pairs]
    g = torch.Generator().manual_seed(seed + 2)
    order = torch.randperm(len(enc), generator=g).tolist()
    steps = len(enc) // batch

    def lm_of(step):
        chunk = [enc[i] for i in order[step * batch : (step + 1) * batch]]
        return lm_batch([(p, c) for p, c, _ in chunk] + [(p, r) for p, _, r in chunk])

    with torch.no_grad():
        refs = [sequence_logps(sft, lm_of(step)) for step in range(steps)]
    save_at = {max(1, round(f * steps)): name for name, f in fractions.items()}
    policy = copy.deepcopy(sft)
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=peak, weight_decay=0.0, betas=(0.9, 0.98))
    hist: list[tuple[float, float, float]] = []
    for step in range(steps):
        ref = refs[step]
        lm = lm_of(step)
        logps = sequence_logps(policy, lm)
        k = batch
        margin = beta * ((logps[:k] - ref[:k]) - (logps[k:] - ref[k:]))
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        if nll_weight:
            # RPO-style: keep the chosen answers likely, so that pushing the rejected ones down
            # cannot drain probability into tokens neither answer uses (a small model's collapse)
            chosen_tokens = (lm[2][:k, 1:] != -100).sum(-1)
            loss = loss - nll_weight * (logps[:k] / chosen_tokens).mean()
        # constant lr after a short warmup, so a truncated run is a prefix of the full one
        set_lr(opt, peak * min(1.0, (step + 1) / warmup))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        hist.append((loss.item(), margin.mean().item(), (margin > 0).float().mean().item()))
        if step + 1 in save_at:
            recent = hist[-8:]
            stats = {
                "step": step + 1,
                "fraction_of_epoch": r6((step + 1) / steps),
                "loss_last_8": r6(sum(h[0] for h in recent) / len(recent)),
                "reward_margin_last_8": r6(sum(h[1] for h in recent) / len(recent)),
                "reward_accuracy_last_8": r6(sum(h[2] for h in recent) / len(recent)),
            }
            log(f"  dpo step {step + 1}/{steps} -> {save_at[step + 1]} {stats}")
            snap = copy.deepcopy(policy)
            snap.eval()
            yield save_at[step + 1], snap, stats
    meta = {"beta": beta, "batch_size": batch, "lr": peak, "warmup_steps": warmup}
    meta["nll_weight"] = nll_weight
    meta |= {"pairs": len(enc), "steps_per_epoch": steps}
    yield "_meta", None, meta


# ----------------------------------------------------------------------------------------------
# Evaluation and saving
# ----------------------------------------------------------------------------------------------


def generate(
    model,
    tok,
    prompts: list[str],
    sample: bool,
    seed: int,
    temperature: float = 0.7,
    top_p: float = 0.9,
    top_k: int = 50,
    batch: int = 256,
) -> list[tuple[str, int, bool]]:
    """(text, new tokens, stopped on eos) per prompt: left-padded batches, plain model.generate."""
    import torch

    kw = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k) if sample else {}
    torch.manual_seed(seed)
    results = []
    for start in range(0, len(prompts), batch):
        seqs = [prompt_ids(tok, p) for p in prompts[start : start + batch]]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([[PAD_ID] * (width - len(s)) + s for s in seqs])
        lead = torch.tensor([width - len(s) for s in seqs])[:, None]
        mask = torch.arange(width)[None, :] >= lead
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask.long(),
                max_new_tokens=MAX_NEW_TOKENS,
                eos_token_id=EOS_ID,
                pad_token_id=PAD_ID,
                **({"do_sample": False} | kw),
            )
        for row in out[:, width:].tolist():
            stopped = EOS_ID in row
            row = row[: row.index(EOS_ID)] if stopped else row
            results.append((tok.decode(row, skip_special_tokens=True), len(row), stopped))
    return results


def evaluate_greedy(model, tok, rm, rm_tok, prompts: list[str]) -> dict:
    gens = generate(model, tok, prompts, sample=False, seed=0)
    rewards = score(rm, rm_tok, [(p, g[0]) for p, g in zip(prompts, gens, strict=True)])
    qual = [quality(p, g[0]) for p, g in zip(prompts, gens, strict=True)]
    return {
        "rm_reward": r6(mean(rewards)),
        "quality": r6(mean(qual)),
        "stop_rate": r6(mean([g[2] for g in gens])),
        "mean_new_tokens": r6(mean([g[1] for g in gens])),
        "example": {"prompt": prompts[0], "answer": gens[0][0]},
    }


def evaluate_sampled(out: Path, names: list[str], prompts: list[str]) -> dict:
    """Each saved policy sampled exactly as `registry.yaml` samples it (expo-batch's transformers
    backend: vLLM-style penalties and seeded sampling), scored by the saved reward model."""
    from expo_batch.generate import get_backend
    from expo_batch.manifest import SamplingConfig, ScorerConfig
    from expo_batch.prompts import render_prompt_ids
    from expo_batch.score import load_scorer

    scorer = load_scorer(ScorerConfig(model=str(out / "rm"), batch_size=8), device="cpu")
    results = {}
    for name in names:
        backend = get_backend("transformers")(out / name, out / name, dtype="auto", device="cpu")
        ids = [render_prompt_ids(backend.tokenizer, p) for p in prompts]
        gens = backend.generate(ids, SamplingConfig(**EVAL_SAMPLING), [EOS_ID])
        backend.close()
        texts = [g.text for g in gens]
        rewards = scorer.score(prompts, texts)
        qual = [quality(p, a) for p, a in zip(prompts, texts, strict=True)]
        results[name] = {
            "rm_reward": r6(mean(rewards)),
            "rm_reward_se": r6(stderr(rewards)),
            "quality": r6(mean(qual)),
            "quality_se": r6(stderr(qual)),
            "stop_rate": r6(mean([g.finish_reason == "stop" for g in gens])),
            "mean_new_tokens": r6(mean([g.n_tokens for g in gens])),
            "examples": [
                {"prompt": p, "answer": a} for p, a in zip(prompts[:3], texts[:3], strict=True)
            ],
        }
    scorer.close()
    return results


def criterion(sampled: dict, distances: dict, rm_accuracy: float) -> dict:
    """The declared success criterion of the alignment step (see README.md)."""
    sft, dpo = sampled["sft"], sampled["dpo-100"]
    d_quality = dpo["quality"] - sft["quality"]
    d_reward = dpo["rm_reward"] - sft["rm_reward"]
    two_se = 2 * math.hypot(sft["rm_reward_se"], dpo["rm_reward_se"])
    dist = [distances[n] for n in ("dpo-10", "dpo-20", "dpo-40", "dpo-100")]
    checks = {
        "quality_gain_ge_0.05": d_quality >= 0.05,
        "reward_gain_ge_2se": d_reward >= two_se,
        "distance_increasing": all(a < b for a, b in zip(dist, dist[1:], strict=False)),
        "rm_heldout_accuracy_ge_0.85": rm_accuracy >= 0.85,
    }
    return {
        "dpo100_minus_sft_quality": r6(d_quality),
        "dpo100_minus_sft_rm_reward": r6(d_reward),
        "two_se_of_reward_difference": r6(two_se),
        **{k: bool(v) for k, v in checks.items()},
        "met": all(checks.values()),
    }


def mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs)


def stderr(xs) -> float:
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def weight_distance(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return math.sqrt(sum(float((sa[k] - sb[k]).double().norm() ** 2) for k in sa))


def save_policy(model, tok, path: Path) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# DPO data is made on-policy, as real DPO data is: K samples per training prompt from the SFT
# policy (sampled as at evaluation), the best against the worst by closed-form quality.
DPO_DATA = dict(prompts=2048, samples_per_prompt=8, min_gap=0.25)
# The reward model learns from independent synthetic pairs of every kind of mistake (the same
# closed-form preferences DPO's pairs are labelled by). Minimal pairs for its blind spots
# (`targeted_pairs`) are only a held-out probe: training on them lowered held-out accuracy.
RM_DATA = dict(synthetic=6000, heldout=512, heldout_targeted=256)


def build(out: Path, seed: int, log) -> dict:
    import tokenizers
    import torch
    import transformers

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    threads = min(2, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    rng = random.Random(seed)

    train_specs, dev_specs = split_specs(rng, n_dev=64)
    dev_prompts = [render_prompt(s) for s in dev_specs]

    corpus_rng = random.Random(seed + 10)
    corpus = []
    for _ in range(4000):
        spec = corpus_rng.choice(train_specs)
        corpus += [render_prompt(spec), sample_answer(spec, corpus_rng)]
    corpus += ["[INST] [/INST]"] * 20
    tok = build_tokenizer(corpus, POLICY_CHAT_TEMPLATE)
    rm_tok = build_tokenizer(corpus, RM_CHAT_TEMPLATE)
    log(f"tokenizer: {len(tok)} tokens ({time.perf_counter() - t0:.0f}s)")

    sft, sft_stats = train_sft(tok, train_specs, rng, seed, log)
    log(f"sft: {sft_stats} ({time.perf_counter() - t0:.0f}s)")

    dpo_pairs, dpo_data = onpolicy_pairs(
        sft,
        tok,
        train_specs,
        DPO_DATA["prompts"],
        DPO_DATA["samples_per_prompt"],
        seed + 30,
        DPO_DATA["min_gap"],
        **{k: EVAL_SAMPLING[k] for k in ("temperature", "top_p", "top_k")},
    )
    log(f"dpo data: {dpo_data} ({time.perf_counter() - t0:.0f}s)")

    rm_train = preference_pairs(train_specs, RM_DATA["synthetic"], random.Random(seed + 20), 0.05)
    random.Random(seed + 24).shuffle(rm_train)
    rm_heldout = preference_pairs(dev_specs, RM_DATA["heldout"], random.Random(seed + 21), 0.05)
    rm, rm_stats = train_rm(sft, rm_tok, rm_train, rm_heldout, seed, log)
    probes = targeted_pairs(dev_specs, RM_DATA["heldout_targeted"], random.Random(seed + 25))
    chosen = score(rm, rm_tok, [(p, c) for p, c, _ in probes])
    rejected = score(rm, rm_tok, [(p, r) for p, _, r in probes])
    rm_stats["data"] = RM_DATA
    rm_stats["heldout_targeted_pairs"] = len(probes)
    rm_stats["heldout_targeted_accuracy"] = r6(
        mean([a > b for a, b in zip(chosen, rejected, strict=True)])
    )
    log(f"rm: {rm_stats} ({time.perf_counter() - t0:.0f}s)")

    fractions = {"dpo-10": 0.1, "dpo-20": 0.2, "dpo-40": 0.4, "dpo-100": 1.0}
    policies = {"sft": sft}
    dpo_stats: dict = {"data": dpo_data, "checkpoints": {}}
    for name, model, stats in train_dpo(sft, tok, dpo_pairs, seed, fractions, log):
        if name == "_meta":
            dpo_stats = stats | dpo_stats
        else:
            policies[name] = model
            stats["weight_distance_from_sft"] = r6(weight_distance(model, sft))
            dpo_stats["checkpoints"][name] = stats
    log(f"dpo done ({time.perf_counter() - t0:.0f}s)")

    out.mkdir(parents=True, exist_ok=True)
    for name, model in policies.items():
        save_policy(model, tok, out / name)
    rm.save_pretrained(out / "rm")
    rm_tok.save_pretrained(out / "rm")
    with open(out / "prompts.jsonl", "w", encoding="utf-8") as f:
        for i, prompt in enumerate(dev_prompts):
            f.write(json.dumps({"id": f"dev-{i:03d}", "prompt": prompt}) + "\n")

    greedy = {n: evaluate_greedy(m, tok, rm, rm_tok, dev_prompts) for n, m in policies.items()}
    sampled = evaluate_sampled(out, list(policies), dev_prompts)
    for name in policies:
        log(f"  {name}: sampled {sampled[name]} | greedy {greedy[name]}")
    distances = {n: s["weight_distance_from_sft"] for n, s in dpo_stats["checkpoints"].items()}
    verdict = criterion(sampled, distances, rm_stats["heldout_accuracy"])
    log(f"criterion: {verdict}")

    world = {
        "seed": seed,
        "torch_threads": threads,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "task": {
            "kind": "list N items of a category (closed-form quality, see quality())",
            "categories": len(CATEGORIES),
            "items_per_category": len(next(iter(CATEGORIES.values()))),
            "n_range": [min(NUMBER_WORDS), max(NUMBER_WORDS)],
            "quality_range": [-1.0, 1.25],
            "prompt_space": len(train_specs) + len(dev_specs),
            "dev_prompts": len(dev_prompts),
        },
        "sizes": {
            "vocab": len(tok),
            "policy_params": count_params(sft),
            "rm_params": count_params(rm),
            "policy_shape": POLICY_SHAPE,
            "dtype": "float32",
        },
        "sft": sft_stats,
        "rm": rm_stats,
        "dpo": dpo_stats,
        "sanity": {
            "max_new_tokens": MAX_NEW_TOKENS,
            "sampling": EVAL_SAMPLING | {"backend": "expo_batch transformers"},
            "sampled": sampled,
            "greedy": greedy,
            "criterion": verdict,
        },
    }
    (out / "world.json").write_text(json.dumps(world, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out} ({time.perf_counter() - t0:.0f}s)")
    return world


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    build(args.out, args.seed, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
