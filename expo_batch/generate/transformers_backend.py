"""The default backend: a transformers causal LM, batched with left padding, vLLM-style sampling.

Generation runs inside ``model.generate`` (greedy search over the scores of
:class:`~expo_batch.generate.sampling.SeededSampler`, which draws the sample itself), so it keeps
transformers' KV cache and speed while honouring every field of the manifest with vLLM's meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expo_batch.errors import ScoringError
from expo_batch.generate.base import Generation, eos_ids
from expo_batch.generate.sampling import SeededSampler, prompt_key
from expo_batch.generate.weights import PairSource, load_into_model
from expo_batch.manifest import SamplingConfig

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def torch_dtype(name: str | None) -> Any:
    import torch

    if name in (None, "auto"):
        return "auto"
    return getattr(torch, _DTYPES[name])


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersBackend:
    """A policy loaded once from the aligned folder; alpha switched in place.

    Args:
        sft_dir, aligned_dir: local checkpoint folders (theta0, theta1).
        dtype: 'auto' (the aligned checkpoint's), 'bfloat16', 'float16' or 'float32'.
        device: 'cpu', 'cuda', 'cuda:1'...; default: cuda when available.
    """

    name = "transformers"

    def __init__(
        self,
        sft_dir: str | Path,
        aligned_dir: str | Path,
        *,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        device: str | None = None,
        vocab_policy: str = "error",
    ):
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        from expo_batch.prompts import load_policy_tokenizer

        self.sft_dir = Path(sft_dir)
        self.aligned_dir = Path(aligned_dir)
        self.device = device or default_device()
        self.tokenizer = load_policy_tokenizer(
            self.aligned_dir, trust_remote_code=trust_remote_code
        )
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(self.aligned_dir), dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
            )
        except Exception as e:
            raise ScoringError(
                f"cannot load the policy {self.aligned_dir}: {type(e).__name__}: {e}"
            ) from None
        self.model = model.to(self.device).eval()
        self.vocab_policy = vocab_policy
        self._source: PairSource | None = None
        self.alpha: float | None = 0.0
        self.eos = eos_ids(self.aligned_dir)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.eos[0] if self.eos else 0
        self.pad_id = int(pad)
        # A clean generation config: the model's own (temperature, repetition_penalty, ...) would
        # otherwise be merged into every call; vLLM ignores them when given explicit parameters.
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.eos or None,
            pad_token_id=self.pad_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        self._torch = torch

    # ------------------------------------------------------------------------------ weights

    @property
    def source(self) -> PairSource:
        if self._source is None:
            self._source = PairSource(
                self.sft_dir, self.aligned_dir, vocab_policy=self.vocab_policy
            )
        return self._source

    def set_weights_alpha(self, alpha: float) -> None:
        alpha = float(alpha)
        if self.alpha is not None and alpha == self.alpha:
            return
        self.alpha = None  # a failure half-way leaves the weights unknown
        load_into_model(
            self.model, self.source.tensors(alpha), where=f"{self.aligned_dir} (alpha {alpha})"
        )
        self.alpha = alpha

    # ---------------------------------------------------------------------------- generation

    def _batch(self, prompt_ids: list[list[int]]):
        torch = self._torch
        width = max(len(p) for p in prompt_ids)
        ids = torch.full((len(prompt_ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for i, p in enumerate(prompt_ids):
            if p:
                ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p) :] = 1
        return ids.to(self.device), mask.to(self.device), width

    def generate(
        self, prompt_ids: list[list[int]], sampling: SamplingConfig, stop_token_ids: list[int]
    ) -> list[Generation]:
        if not prompt_ids:
            return []
        from transformers import GenerationConfig, LogitsProcessorList

        torch = self._torch
        stops = list(dict.fromkeys([*self.eos, *(int(t) for t in stop_token_ids)]))
        ids, mask, width = self._batch(prompt_ids)
        sampler = SeededSampler(
            [prompt_key(sampling.seed, p) for p in prompt_ids],
            width,
            self.model.config.get_text_config().vocab_size,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
        )
        config = GenerationConfig(
            max_new_tokens=sampling.max_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=stops or None,
            pad_token_id=self.pad_id,
        )
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]),
            )
        return [self._record(row, stops) for row in out[:, width:].tolist()]

    def _record(self, row: list[int], stops: list[int]) -> Generation:
        stop_set = set(stops)
        for i, t in enumerate(row):
            if t in stop_set:
                text = self.tokenizer.decode(row[:i], skip_special_tokens=True)
                return Generation(text, i + 1, "stop")
        return Generation(self.tokenizer.decode(row, skip_special_tokens=True), len(row), "length")

    def close(self) -> None:
        self.model = None
        if self._source is not None:
            self._source.close()
            self._source = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
