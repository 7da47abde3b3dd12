"""Scoring answers: a reward model (the authors' recipe, exactly) or a function by import path.

The reward-model recipe (eval_protocol.md §4): the RM tokenizer's own chat template over
[user prompt, answer] with ``tokenize=False``, every BOS string removed, then tokenized with
special tokens (so exactly one BOS), and the raw logit of the single label, no sigmoid.

Padding must not change a score (reward-bench#137): texts are sorted by length, batched, padded
on the right with an attention mask, and the score head is read at each text's own last token,
computed by us rather than by the model's pad-id search (which is wrong when the pad token is the
EOS the template ends with).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from expo_batch.errors import ScoringError

if TYPE_CHECKING:
    from expo_batch.manifest import ScorerConfig


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, prompts: list[str], answers: list[str]) -> list[float]: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------- formatting


def format_reward_text(tokenizer: Any, prompt: str, answer: str) -> str:
    """The RM input text of one (prompt, answer): its chat template, BOS strings removed."""
    if not getattr(tokenizer, "chat_template", None):
        raise ScoringError(
            f"the reward model tokenizer {getattr(tokenizer, 'name_or_path', '')!r} "
            "has no chat template",
            "the authors' recipe formats [user, assistant] with the RM's own template",
        )
    chat = [{"role": "user", "content": str(prompt)}, {"role": "assistant", "content": str(answer)}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
    if tokenizer.bos_token:
        text = text.replace(tokenizer.bos_token, "")
    return text


def reward_input_ids(tokenizer: Any, prompt: str, answer: str) -> list[int]:
    """Token ids the RM sees: the formatted text tokenized with special tokens (one BOS)."""
    text = format_reward_text(tokenizer, prompt, answer)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to keep padding small."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _resolve_model(text: str) -> tuple[str, str | None]:
    """(path or repo id, revision) for from_pretrained."""
    from expo_batch.refs import parse_ref

    try:
        ref = parse_ref(text)
    except ValueError as e:
        raise ScoringError(f"scorer model: {e}") from None
    if ref.path is not None:
        if not ref.path.is_dir():
            raise ScoringError(f"reward model folder {ref.path} does not exist")
        return str(ref.path), None
    return str(ref.repo_id), ref.revision


# ---------------------------------------------------------------------------- reward model


class RewardModelScorer:
    """An AutoModelForSequenceClassification reward model with a single label.

    Args:
        model: a local folder, ``org/name`` or ``org/name@revision``.
        batch_size: texts per forward pass (sorted by length first).
        dtype: 'auto', 'bfloat16', 'float16' or 'float32'.
    """

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 8,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        device: str | None = None,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from expo_batch.generate.transformers_backend import default_device, torch_dtype

        self.name = model
        self.batch_size = batch_size
        self.device = device or default_device()
        where, revision = _resolve_model(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                where, revision=revision, trust_remote_code=trust_remote_code
            )
            rm = AutoModelForSequenceClassification.from_pretrained(
                where,
                revision=revision,
                dtype=torch_dtype(dtype),
                trust_remote_code=trust_remote_code,
            )
        except Exception as e:
            raise ScoringError(
                f"cannot load the reward model {model}: {type(e).__name__}: {e}"
            ) from None
        if rm.config.num_labels != 1:
            raise ScoringError(
                f"reward model {model} has {rm.config.num_labels} labels; "
                "a reward model has exactly one"
            )
        self.model = rm.to(self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = (
                self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
            )
        # Read the head ourselves when the model has the usual base + `score` layout.
        base = getattr(self.model, "base_model", None)
        head = getattr(self.model, "score", None)
        self._split = (
            base is not None and base is not self.model and isinstance(head, torch.nn.Module)
        )
        self._torch = torch

    def encode(self, prompts: list[str], answers: list[str]) -> list[list[int]]:
        return [
            reward_input_ids(self.tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)
        ]

    def score_ids(self, ids: list[list[int]]) -> list[float]:
        scores: list[float] = [math.nan] * len(ids)
        if self._split:
            batches = length_batches([len(x) for x in ids], self.batch_size)
        else:  # unknown head layout: only equal-length texts share a batch, so nothing is padded
            groups: dict[int, list[int]] = {}
            for i, x in enumerate(ids):
                groups.setdefault(len(x), []).append(i)
            batches = [
                g[j : j + self.batch_size]
                for g in groups.values()
                for j in range(0, len(g), self.batch_size)
            ]
        for batch in batches:
            for i, s in zip(batch, self._forward([ids[i] for i in batch]), strict=True):
                scores[i] = s
        return scores

    def _forward(self, batch: list[list[int]]) -> list[float]:
        torch = self._torch
        width = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, x in enumerate(batch):
            input_ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            if self._split:
                hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask)[0]
                last = torch.tensor([len(x) - 1 for x in batch], device=hidden.device)
                pooled = hidden[torch.arange(len(batch), device=hidden.device), last]
                logits = self.model.score(pooled)
            else:
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
        return [float(v) for v in logits[:, 0].float().cpu().tolist()]

    def score(self, prompts: list[str], answers: list[str]) -> list[float]:
        return self.score_ids(self.encode(prompts, answers))

    def close(self) -> None:
        self.model = None
        if str(self.device).startswith("cuda"):
            self._torch.cuda.empty_cache()


class VllmRewardScorer:
    """The same recipe on a vLLM pooling engine (raw logits: ``use_activation=False``)."""

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 8,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        device: str | None = None,
        **engine_kwargs: Any,
    ):
        from transformers import AutoTokenizer
        from vllm import LLM

        self.name = model
        self.batch_size = batch_size
        where, revision = _resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(
            where, revision=revision, trust_remote_code=trust_remote_code
        )
        kwargs = {"enforce_eager": True, "seed": 42, **engine_kwargs}
        self.llm = LLM(
            model=where,
            revision=revision,
            runner="pooling",
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )

    def score(self, prompts: list[str], answers: list[str]) -> list[float]:
        from vllm import PoolingParams, TokensPrompt

        ids = [
            reward_input_ids(self.tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)
        ]
        outs = self.llm.classify(
            [TokensPrompt(prompt_token_ids=x) for x in ids],
            pooling_params=PoolingParams(use_activation=False),
            use_tqdm=False,
        )
        return [float(o.outputs.probs[0]) for o in outs]

    def close(self) -> None:
        self.llm = None


# -------------------------------------------------------------------------------- function


def _import_function(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ScoringError(
            f"scorer function {spec!r}: cannot import module {module_name!r} ({e})"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ScoringError(
            f"scorer function {spec!r}: module {module_name!r} has no function {attr!r}"
        )
    return fn


class FunctionScorer:
    """``module:function`` called as ``function(prompts, answers)`` and returning one float each."""

    def __init__(self, spec: str):
        self.name = spec
        self.fn = _import_function(spec)

    def score(self, prompts: list[str], answers: list[str]) -> list[float]:
        values = self.fn(list(prompts), list(answers))
        try:
            values = list(values)
        except TypeError:
            raise ScoringError(
                f"scorer function {self.name!r} returned {type(values).__name__}, "
                "expected a list of floats"
            ) from None
        if len(values) != len(answers):
            raise ScoringError(
                f"scorer function {self.name!r} returned {len(values)} scores "
                f"for {len(answers)} answers"
            )
        out = []
        for i, v in enumerate(values):
            if hasattr(v, "item") and not isinstance(v, (int, float)):
                v = v.item()  # numpy / torch scalars
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ScoringError(
                    f"scorer function {self.name!r} returned {v!r} at position {i}; "
                    "expected a finite float"
                )
            out.append(float(v))
        return out

    def close(self) -> None:
        pass


def load_scorer(
    cfg: ScorerConfig, *, device: str | None = None, backend: str = "transformers"
) -> Scorer:
    """The scorer a :class:`~expo_batch.manifest.ScorerConfig` names.

    ``backend='vllm'`` scores a reward model on a vLLM pooling engine instead of transformers.
    """
    if cfg.function is not None:
        return FunctionScorer(cfg.function)
    assert cfg.model is not None
    cls = VllmRewardScorer if backend == "vllm" else RewardModelScorer
    return cls(
        cfg.model,
        batch_size=cfg.batch_size,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
        device=device,
    )


def scorer_id(cfg: ScorerConfig) -> str:
    """A short stable name of the scorer for records and fingerprints."""
    return cfg.function if cfg.function is not None else str(cfg.model)


__all__ = [
    "FunctionScorer",
    "RewardModelScorer",
    "Scorer",
    "VllmRewardScorer",
    "format_reward_text",
    "length_batches",
    "load_scorer",
    "reward_input_ids",
    "scorer_id",
]
