"""Multi-head attention `softmax(Q K^T / sqrt(d_k)) V` (Vaswani et al., 2017) on PyTorch's
`scaled_dot_product_attention`, with grouped-query attention (Ainslie et al., 2023), causal and
padding masks, and a preallocated key/value cache for decoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.nn.position import apply_rope


class KVCache:
    """Keys and values of every layer, preallocated as (B, n_kv_heads, max_len, d_head).

    Decoding writes each new position in place instead of growing tensors by concatenation.
    `length` counts the positions already stored; the model advances it after a forward pass.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        max_len: int,
        n_kv_heads: int,
        d_head: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ):
        shape = (batch_size, n_kv_heads, max_len, d_head)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_heads, T, d_head) after the cached positions; return all of them."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise LmforgeError(
                f"sequence of {end} tokens exceeds the cache of {self.max_len}; "
                "use a shorter prompt or fewer new tokens"
            )
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search moves hypotheses between rows)."""
        for cache in (self.keys, self.values):
            for i, t in enumerate(cache):
                cache[i] = t.index_select(0, index)


def decoder_positions(
    attention_mask: torch.Tensor | None, q_len: int, past_len: int, device: torch.device
) -> torch.Tensor:
    """Position ids (B, T) of the new tokens; with left padding each row counts from its first
    real token, so a padded row sees exactly the positions it would see alone."""
    if attention_mask is None:
        return torch.arange(past_len, past_len + q_len, device=device)[None]
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)[:, past_len : past_len + q_len]


def decoder_mask(
    attention_mask: torch.Tensor | None, q_len: int, past_len: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """The mask for causal self-attention: (mask, is_causal) for `scaled_dot_product_attention`.

    attention_mask is (B, past_len + q_len), 1 for real tokens and 0 for padding, or None.
    Without padding no mask tensor is built: SDPA's own causal path is faster.
    """
    if attention_mask is None:
        if past_len == 0:
            return None, q_len > 1
        if q_len == 1:
            return None, False
    total = past_len + q_len
    query_pos = torch.arange(past_len, total, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(total, device=device)[None, :]  # (1, S)
    mask = (key_pos <= query_pos)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        if attention_mask.shape[-1] != total:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, expected {total}")
        # NOTE: a padding query still attends to itself, so no row is fully masked: an all -inf row
        # gives NaN, and NaN times a zero weight is still NaN in the next layer.
        mask = (mask & attention_mask.bool()[:, None, None, :]) | (key_pos == query_pos)[None, None]
    return mask, False


class Attention(nn.Module):
    """Multi-head self-attention with n_kv_heads <= n_heads key/value heads (GQA when fewer)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        d_head: int | None = None,
        *,
        bias: bool = False,
        out_bias: bool | None = None,
        dropout: float = 0.0,
        layer_idx: int = 0,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.d_head = d_head or d_model // n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        self.q_proj = nn.Linear(d_model, self.n_heads * self.d_head, bias=bias)
        self.k_proj = nn.Linear(d_model, self.n_kv_heads * self.d_head, bias=bias)
        self.v_proj = nn.Linear(d_model, self.n_kv_heads * self.d_head, bias=bias)
        self.o_proj = nn.Linear(
            self.n_heads * self.d_head, d_model, bias=bias if out_bias is None else out_bias
        )
        self.dropout = dropout
        self.layer_idx = layer_idx

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, n_heads, T, d_head)
        k = (
            self.k_proj(x).view(B, T, self.n_kv_heads, self.d_head).transpose(1, 2)
        )  # (B, n_kv_heads, T, d_head)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.d_head).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head)  # (B, T, n_heads * d_head)
        return self.o_proj(out)
