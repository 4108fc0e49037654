"""What every decoder-only language model shares around its family-specific blocks: the KV cache
it allocates, its weight initialisation, and saving as a Hugging Face checkpoint.

A family (gpt2.py, llama.py) subclasses `CausalLM` and defines `config`, `blocks`, and
`hidden(input_ids, ...)`; `forward` is always `lm_head(hidden(...))`, giving logits (B, T, vocab_size).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.models.base import PretrainedModel
from lmforge.nn import KVCache


class CausalLM(PretrainedModel):
    """Base class of the decoder-only families: next-token logits from token ids."""

    config: object
    is_encoder_decoder = False

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for input_ids (B, T).

        attention_mask (B, cached + T) marks real tokens with 1 and padding with 0; with a cache,
        the new tokens are stored in it and attend to everything cached before them.
        """
        x = self.hidden(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        return self.lm_head(x)

    def new_cache(
        self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_len` tokens."""
        attn = self.blocks[0].attn
        return KVCache(
            len(self.blocks),
            batch_size,
            max_len or self.config.max_seq_len,
            attn.n_kv_heads,
            attn.d_head,
            dtype=dtype or self.dtype,
            device=self.device,
        )

    def init_weights(self) -> None:
        """N(0, 0.02) weights and zero biases; the projections that write into the residual stream
        are scaled by 1/sqrt(2 n_layers) so its variance does not grow with depth (GPT-2 paper)."""
        residual_std = 0.02 / math.sqrt(2 * len(self.blocks))
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                is_residual = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual else 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
