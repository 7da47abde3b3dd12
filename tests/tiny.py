"""Build tiny real models for tests: a trained BPE tokenizer with a chat template, Llama policies
(SFT and an aligned one a small delta away) and a Llama reward model, saved with save_pretrained.

Everything is seeded; head_dim is 32 so that vLLM's CPU attention accepts the models too.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% else %}<|system|>\n{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# A different template for the reward model, as real RMs have their own.
RM_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)

_WORDS = (
    "the a an of to and in is it you that he was for on are with as I his they be at one have "
    "this from or had by hot word but what some we can out other were all there when up use your "
    "how said each she which do their time if will way about many then them write would like so "
    "these her long make thing see him two has look more day could go come did number sound no "
    "most people my over know water than call first who may down side been now find answer "
    "question explain list name give tell short good bad help please thanks sure here"
).split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        k = int(torch.randint(3, 12, (1,), generator=g))
        idx = torch.randint(0, len(_WORDS), (k,), generator=g).tolist()
        lines.append(" ".join(_WORDS[i] for i in idx))
    return lines


def build_tokenizer(chat_template: str | None = CHAT_TEMPLATE, vocab_size: int = 384):
    """A byte-level BPE trained on a small corpus, wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus() + ["[INST] [/INST]"], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def llama_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def build_policy(seed: int = 0, vocab_size: int = 384, dtype=torch.float32, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(vocab_size, **overrides))
    return model.to(dtype)


def perturbed(model, scale: float = 0.02, seed: int = 1):
    """A copy of ``model`` moved by a small random delta, like an aligned model from its SFT."""
    import copy

    g = torch.Generator().manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            p.add_((noise * scale * p.float().std().clamp_min(1e-3)).to(p.dtype))
    return other


def save_policy(model, tokenizer, path: Path, **save_kw) -> Path:
    path = Path(path)
    model.generation_config.do_sample = True
    model.save_pretrained(path, **save_kw)
    tokenizer.save_pretrained(path)
    return path


def build_reward_model(path: Path, seed: int = 7, vocab_size: int = 384) -> Path:
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    cfg = llama_config(vocab_size, num_labels=1)
    model = LlamaForSequenceClassification(cfg)
    tok = build_tokenizer(RM_CHAT_TEMPLATE)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)
