"""What every decoder-only language model shares around its family-specific blocks: the forward pass
through them, the KV cache it allocates, its weight initialisation, and saving as a Hugging Face
checkpoint.

A family (gpt2.py, llama.py) subclasses `CausalLM` and defines `config`, `blocks` (each called as
`block(x, feed, rope)`), `norm`, `lm_head`, and `embed_input`, its one difference here: how token ids
and their positions become the residual stream (and rotary angles, where positions are rotations).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.models.base import PretrainedModel
from lmforge.nn import Feed, KVCache, allocate_cache
from lmforge.nn.fuse import swap_decode_linears


class CausalLM(PretrainedModel):
    """Base class of the decoder-only families: next-token logits from token ids."""

    config: object
    is_encoder_decoder = False
    is_fused = False  # fuse_projections has fused layers: an inference-only model
    has_decode_linears = False  # fuse_projections has made every linear layer a DecodeLinear

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for input_ids (B, T); the arguments are those of `hidden`."""
        return self.lm_head(self.hidden(input_ids, attention_mask=attention_mask, cache=cache))

    def hidden(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The final normalised hidden states (B, T, d_model) of input_ids (B, T).

        attention_mask (B, T) marks the padding among these tokens with 0. With a cache, they are
        stored in it and attend to what their row holds; the cache gives their positions and mask.
        """
        T = input_ids.shape[1]
        if cache is not None:
            feed = cache.feed(T, attention_mask)
        else:
            feed = Feed.uncached(T, attention_mask, device=input_ids.device)
        x, rope = self.embed_input(input_ids, feed.positions)
        for block in self.blocks:
            x = block(x, feed, rope)
        return self.norm(x)

    def new_cache(
        self,
        rows: int,
        capacity: int | None = None,
        dtype: torch.dtype | None = None,
        *,
        is_static: bool = False,
    ) -> KVCache:
        """An empty KV cache for `rows` sequences of up to `capacity` tokens (max_seq_len when None)."""
        return allocate_cache(
            self.blocks,
            rows,
            capacity or self.config.max_seq_len,
            dtype=dtype or self.dtype,
            device=self.device,
            is_static=is_static,
        )

    def fuse_projections(self) -> int:
        """For inference: in every block, the query, key and value projections become one linear
        layer, and a gated MLP's gate and up projections another, so a decode step makes fewer, larger
        matrix products (SmolLM2-135M: 4 a block instead of 7); then every linear layer multiplies the
        few rows of a decode step faster (lmforge/nn/fuse.py, DecodeLinear). The same values; but the checkpoint's
        layers are gone, so the model can no longer be saved or trained. Returns how many were fused."""
        fused = 0
        for block in self.blocks:
            fused += block.attn.fuse_qkv()
            fuse_gate_up = getattr(block.mlp, "fuse_gate_up", None)
            fused += bool(fuse_gate_up and fuse_gate_up())
        swap_decode_linears(self)
        self.has_decode_linears = True  # few rows multiply fast by themselves: no function mode needed
        self.is_fused = self.is_fused or fused > 0
        return fused

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
