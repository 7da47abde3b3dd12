"""vLLM-style sampling for the transformers backend, seeded per prompt.

The pipeline is vLLM's: penalties on the raw logits, then temperature, then top-k and top-p
(vLLM's ``apply_top_k_top_p``), then a random draw. The draw is Gumbel-max with noise from a
counter-based hash of (prompt key, step, token id), so a prompt's sample depends on the seed and
the prompt alone, never on which other prompts share its batch, and no per-row generator is
needed: the noise for a whole batch is a handful of vectorised integer ops. The result is an
argmax, so the processor runs inside ``model.generate(do_sample=False)`` and keeps its speed.
"""

from __future__ import annotations

import zlib

import torch

from expo_batch.generate.penalties import PenaltyState

_M32 = 0xFFFFFFFF


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in [0, 2**32)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def prompt_key(seed: int, prompt_ids: list[int]) -> int:
    """A 32-bit key for one prompt's random stream: the seed and the prompt's tokens."""
    data = b",".join(str(t).encode() for t in prompt_ids)
    return zlib.crc32(data, int(seed) & _M32)


def token_hashes(vocab: int, device: torch.device | str | None = None) -> torch.Tensor:
    return _fmix32(torch.arange(vocab, dtype=torch.int64, device=device))


def uniform_noise(
    keys: torch.Tensor, step: int, vocab: int, token_hash: torch.Tensor | None = None
) -> torch.Tensor:
    """Uniforms in (0, 1), shape (rows, vocab), a pure function of (key, step, token id)."""
    s = _fmix32(torch.tensor([(step * 0x9E3779B9 + 0x7F4A7C15) & _M32], dtype=torch.int64))
    base = _fmix32(keys.to(torch.int64) ^ s.to(keys.device))
    if token_hash is None:
        token_hash = token_hashes(vocab, keys.device)
    h = _fmix32(base[:, None] ^ token_hash[None, :])
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """vLLM's ``apply_top_k_top_p`` for one k and p shared by all rows; masked entries are -inf."""
    vocab = logits.shape[-1]
    use_k = 0 < top_k < vocab
    use_p = top_p < 1.0
    if not (use_k or use_p):
        return logits
    if use_k and not use_p:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    logits_sort, idx = logits.sort(dim=-1, descending=False)
    if use_k:
        kth = logits_sort[:, vocab - top_k : vocab - top_k + 1]
        logits_sort = logits_sort.masked_fill(logits_sort < kth, float("-inf"))
    probs_sum = logits_sort.softmax(dim=-1).cumsum(dim=-1)
    mask = probs_sum <= 1 - top_p
    mask[:, -1] = False
    logits_sort = logits_sort.masked_fill(mask, float("-inf"))
    return logits_sort.scatter(-1, idx, logits_sort)


class SeededSampler:
    """The whole sampling step as one logits processor; an argmax of its output is the sample.

    Args:
        keys: one 32-bit key per row (see :func:`prompt_key`).
        prompt_len: padded prompt width (generated tokens start there in every row).
        temperature: 0 means greedy (then only the penalties apply).
    """

    def __init__(
        self,
        keys: list[int],
        prompt_len: int,
        vocab_size: int,
        *,
        temperature: float,
        top_k: int,
        top_p: float,
        presence_penalty: float,
        frequency_penalty: float,
    ):
        self.keys = torch.tensor(keys, dtype=torch.int64)
        self.prompt_len = prompt_len
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.presence = presence_penalty
        self.frequency = frequency_penalty
        self.penalties = PenaltyState(prompt_len, vocab_size, presence_penalty, frequency_penalty)
        self._token_hash: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        if self.presence or self.frequency:
            scores = scores - self.penalties.update(input_ids, scores.shape[-1])
        if self.temperature == 0:
            return scores
        scores = scores / self.temperature
        scores = top_k_top_p(scores, self.top_k, self.top_p)
        step = input_ids.shape[1] - self.prompt_len
        vocab = scores.shape[-1]
        if self._token_hash is None or self._token_hash.shape[0] != vocab:
            self.keys = self.keys.to(scores.device)
            self._token_hash = token_hashes(vocab, scores.device)
        u = uniform_noise(self.keys, step, vocab, self._token_hash)
        # Gumbel-max: argmax(scores + Gumbel noise) is a draw from softmax(scores).
        return scores - torch.log_(-torch.log_(u))
