"""Generation with an encoder-decoder (T5): the input is encoded once, then the decoder generates
from `decoder_start_token_id`, one token per step, exactly as a decoder-only model continues a prompt.

`EncodedInputs` is the decoder bound to the encoded inputs. It has the interface the decoding loops
use on a decoder-only model (`hidden`, `lm_head`, `new_cache`, `config`, `device`), so greedy,
sampling and beam search run unchanged on the decoder's tokens, which always start as one start token
per row: no decoder padding is ever needed. Inputs of different lengths are padded on the right for the
encoder, and the padding is masked out of both the encoder and the cross-attention.
"""

from __future__ import annotations

import torch

from lmforge.errors import LmforgeError


class EncodedInputs:
    """A T5 model's decoder, attending to the encoder output of one batch of inputs."""

    def __init__(self, model, encoded: torch.Tensor, attention_mask: torch.Tensor | None):
        self.model, self.encoded, self.attention_mask = model, encoded, attention_mask
        self.config, self.device = model.config, model.device
        # The loops call `lm_head` on decoder hidden states; T5's logits may rescale them first.
        self.lm_head = model.logits

    def hidden(self, decoder_ids: torch.Tensor, *, attention_mask=None, cache=None) -> torch.Tensor:
        """Decoder hidden states (B, T, d_model) for the decoder tokens not yet in the cache."""
        if attention_mask is not None:
            raise ValueError("decoder inputs are never padded: every row starts with one start token")
        return self.model.decode(decoder_ids, self.encoded, attention_mask=self.attention_mask, cache=cache)

    def new_cache(self, rows: int, capacity: int | None = None, dtype: torch.dtype | None = None, **options):
        return self.model.new_cache(rows, capacity, dtype, **options)


@torch.inference_mode()
def encode_inputs(model, prompts: list[list[int]], pad_token_id: int, copies: int = 1) -> EncodedInputs:
    """Encode right-padded prompts once; each row repeated `copies` times in a row (beam search)."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        mask[row, : len(prompt)] = 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    is_padded = bool((mask == 0).any())
    encoded = model.encode(ids, mask if is_padded else None)
    if copies > 1:
        encoded, mask = encoded.repeat_interleave(copies, 0), mask.repeat_interleave(copies, 0)
    return EncodedInputs(model, encoded, mask if is_padded else None)


def decoder_start_prompts(model, n_rows: int) -> list[list[int]]:
    """One decoder start token per row: the prompts the decoding loops continue."""
    start = getattr(model.config, "decoder_start_token_id", None)
    if start is None:
        raise LmforgeError(
            "the model config has no decoder_start_token_id; set it in config.json (T5 uses 0)"
        )
    return [[start] for _ in range(n_rows)]
