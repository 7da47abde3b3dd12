"""The vLLM backend (optional; imported only when chosen).

One ``LLM`` engine on the aligned model, tensor parallel across the visible GPUs, prompts as
token ids, ``SamplingParams`` mirroring the manifest. Alpha is switched in place by
:class:`~expo_batch.generate.vllm_worker.ExpoWeightsExtension` through ``collective_rpc``, followed
by ``reset_prefix_cache()`` (a stale prefix cache would serve KV blocks of the old weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expo_batch.errors import ScoringError
from expo_batch.generate.base import Generation
from expo_batch.manifest import SamplingConfig

WORKER_EXTENSION = "expo_batch.generate.vllm_worker.ExpoWeightsExtension"


def sampling_params(sampling: SamplingConfig, stop_token_ids: list[int]) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        n=1,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k if sampling.top_k > 0 else 0,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        max_tokens=sampling.max_tokens,
        seed=sampling.seed,
        stop_token_ids=list(stop_token_ids) or None,
    )


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


class VllmBackend:
    name = "vllm"

    def __init__(
        self,
        sft_dir: str | Path,
        aligned_dir: str | Path,
        *,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        device: str | None = None,
        vocab_policy: str = "error",
        seed: int = 42,
        **engine_kwargs: Any,
    ):
        from vllm import LLM

        from expo_batch.prompts import load_policy_tokenizer

        self.sft_dir = Path(sft_dir).resolve()
        self.aligned_dir = Path(aligned_dir).resolve()
        self.vocab_policy = vocab_policy
        self.tokenizer = load_policy_tokenizer(
            self.aligned_dir, trust_remote_code=trust_remote_code
        )
        gpus = visible_gpus()
        kwargs: dict[str, Any] = {"tensor_parallel_size": max(gpus, 1)}
        if gpus == 0:
            kwargs["enforce_eager"] = True  # the CPU path that works (vllm_on_cpu.md §3)
        kwargs.update(engine_kwargs)
        try:
            self.llm = LLM(
                model=str(self.aligned_dir),
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                seed=seed,
                worker_extension_cls=WORKER_EXTENSION,
                **kwargs,
            )
        except Exception as e:
            raise ScoringError(
                f"vLLM could not start on {self.aligned_dir}: {type(e).__name__}: {e}"
            ) from None
        self.alpha: float | None = 0.0
        self.last_switch_s: float | None = None

    def set_weights_alpha(self, alpha: float) -> None:
        alpha = float(alpha)
        if self.alpha is not None and alpha == self.alpha:
            return
        self.alpha = None
        times = self.llm.collective_rpc(
            "expo_set_alpha",
            args=(str(self.sft_dir), str(self.aligned_dir), alpha, self.vocab_policy),
        )
        self.llm.reset_prefix_cache()
        self.last_switch_s = max(times) if times else None
        self.alpha = alpha

    def generate(
        self, prompt_ids: list[list[int]], sampling: SamplingConfig, stop_token_ids: list[int]
    ) -> list[Generation]:
        if not prompt_ids:
            return []
        from vllm import TokensPrompt

        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids],
            sampling_params(sampling, stop_token_ids),
            use_tqdm=False,
        )
        gens = []
        for o in outs:
            c = o.outputs[0]
            if c.finish_reason not in ("stop", "length"):
                raise ScoringError(f"vLLM finished a request with reason {c.finish_reason!r}")
            gens.append(Generation(c.text, len(c.token_ids), c.finish_reason))
        return gens

    def close(self) -> None:
        self.llm = None
