"""Presence and frequency penalties with vLLM's meaning, as a transformers logits processor.

vLLM (``vllm/model_executor/layers/utils.py: apply_penalties``) subtracts, from the raw logits
before temperature, ``frequency_penalty * count(token)`` and ``presence_penalty * [count > 0]``,
where counts are over the tokens generated so far for that sequence, never the prompt.
transformers has no equivalent (its ``repetition_penalty`` is multiplicative and counts the prompt).
"""

from __future__ import annotations

import torch


def apply_penalties(
    logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """``logits - frequency * counts - presence * (counts > 0)``, vLLM's formula. Pure."""
    out = logits
    if frequency:
        out = out - frequency * counts.to(logits.dtype)
    if presence:
        out = out - presence * (counts > 0).to(logits.dtype)
    return out


class PenaltyState:
    """Per-row penalties over the generated part of ``input_ids``, updated one step at a time.

    ``prompt_len`` is the padded prompt width: with left padding every row's generated tokens
    start there. Rather than recount the output at every step, the state keeps the counts and
    the penalty tensor ``frequency * count + presence * [count > 0]`` and updates only the
    entries of the new tokens, so a step costs one subtraction over the vocabulary.
    """

    def __init__(
        self, prompt_len: int, vocab_size: int, presence: float = 0.0, frequency: float = 0.0
    ):
        self.prompt_len = prompt_len
        self.vocab_size = vocab_size
        self.presence = presence
        self.frequency = frequency
        self.counts: torch.Tensor | None = None
        self.penalty: torch.Tensor | None = None
        self.seen = 0

    def update(self, input_ids: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
        """Count the tokens added since the last call; return the penalty tensor (rows, vocab)."""
        vocab = vocab_size or self.vocab_size
        rows = input_ids.shape[0]
        if self.counts is None or self.counts.shape != (rows, vocab):
            self.counts = torch.zeros(rows, vocab, dtype=torch.int32, device=input_ids.device)
            self.penalty = torch.zeros(rows, vocab, dtype=torch.float32, device=input_ids.device)
            self.seen = 0
        assert self.penalty is not None
        new = input_ids[:, self.prompt_len + self.seen :]
        for c in range(new.shape[1]):
            tok = new[:, c : c + 1].clamp(
                max=vocab - 1
            )  # pad ids of finished rows may exceed the head
            first = self.counts.gather(1, tok) == 0
            self.counts.scatter_add_(1, tok, torch.ones_like(tok, dtype=torch.int32))
            delta = self.frequency + self.presence * first.to(torch.float32)
            self.penalty.scatter_add_(1, tok, delta)
        self.seen += new.shape[1]
        return self.penalty


class PenaltyLogitsProcessor:
    """A transformers-compatible logits processor (``__call__(input_ids, scores)``)."""

    def __init__(self, prompt_len: int, vocab_size: int, presence: float, frequency: float):
        self.state = PenaltyState(prompt_len, vocab_size, presence, frequency)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        penalty = self.state.update(input_ids, scores.shape[-1])
        return scores - penalty.to(scores.dtype)
