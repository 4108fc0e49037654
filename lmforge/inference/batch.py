"""The state of a batch being generated: token ids and attention mask in preallocated buffers, and
the model step that turns them into next-token logits.

Prompts of different lengths are left-padded, so every row's next token is in the same column and
one forward pass serves the whole batch; the mask (1 = real token, 0 = padding) keeps padding out
of attention and gives each row the positions it would have alone.
"""

from __future__ import annotations

import torch

from lmforge.inference.sampling import seen_tokens
from lmforge.nn import KVCache


class TokenBuffer:
    """Left-padded prompts followed by their generated tokens, as (B, capacity) ids and mask.

    Tokens are written in place, column `length` at a time, instead of concatenating growing tensors.
    Given a vocab_size, `seen` (B, V) also tracks which tokens each row holds (for the repetition penalty).
    """

    def __init__(
        self,
        prompts: list[list[int]],
        capacity: int,
        pad_token_id: int,
        device: torch.device,
        *,
        vocab_size: int | None = None,
    ):
        self.prompt_len = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), capacity), pad_token_id, dtype=torch.long)
        mask = torch.ones((len(prompts), capacity), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            n_pad = self.prompt_len - len(prompt)
            ids[row, n_pad : self.prompt_len] = torch.tensor(prompt, dtype=torch.long)
            mask[row, :n_pad] = 0
        self.ids, self.mask = ids.to(device), mask.to(device)
        self.length = self.prompt_len
        self.is_padded = any(len(p) < self.prompt_len for p in prompts)
        self.seen, self._rows = None, torch.arange(len(prompts), device=device)
        if vocab_size is not None:
            self.seen = seen_tokens(self.ids[:, : self.length], self.mask[:, : self.length], vocab_size)

    def append(self, tokens: torch.Tensor) -> None:
        """Write one new token (B,) per row."""
        self.ids[:, self.length] = tokens
        self.length += 1
        if self.seen is not None:
            self.seen[self._rows, tokens] = True

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (beam search moves hypotheses between rows)."""
        self.ids = self.ids.index_select(0, index)
        self.mask = self.mask.index_select(0, index)
        if self.seen is not None:
            self.seen = self.seen.index_select(0, index)

    def generated(self, row: int) -> list[int]:
        """The tokens generated so far in one row."""
        return self.ids[row, self.prompt_len : self.length].tolist()


def next_token_logits(model, batch: TokenBuffer, cache: KVCache | None) -> torch.Tensor:
    """Float logits (B, V) for the token after each row of `batch`.

    The model is fed the tokens not yet in the cache: the whole prompt first (prefill), then one token
    per step. Without a cache, every step recomputes the whole sequence.
    """
    start = cache.length if cache is not None else 0
    # Only a prompt holds padding; without it no mask is passed, so attention takes its faster paths.
    mask = batch.mask[:, start : batch.length] if batch.is_padded and start < batch.prompt_len else None
    x = model.hidden(batch.ids[:, start : batch.length], attention_mask=mask, cache=cache)
    # NOTE: only the last position goes through lm_head; at prefill the full (B, T, V) logits of a long
    # prompt would cost more memory than the whole model's activations.
    return model.lm_head(x[:, -1]).float()
