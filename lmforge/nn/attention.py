"""Multi-head attention `softmax(Q K^T / sqrt(d_k)) V` (Vaswani et al., 2017) on PyTorch's
`scaled_dot_product_attention`, with grouped-query attention (Ainslie et al., 2023), causal and
padding masks, a preallocated key/value cache for decoding, and what an encoder-decoder adds:
cross-attention to another sequence (keys and values computed once per generation) and an additive
position bias on the scores (T5).
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


class CrossKVCache:
    """Keys and values of cross-attention, per decoder layer: they depend only on the encoder output,
    so they are computed at the first decoding step and reused by every later one."""

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def get(self, layer: int, compute) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached (k, v) of a layer; `compute()` gives them the first time."""
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = compute()
        return self.keys[layer], self.values[layer]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index`."""
        for cache in (self.keys, self.values):
            for i, t in enumerate(cache):
                if t is not None:
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


def causal_mask(q_len: int, past_len: int, device: torch.device) -> torch.Tensor:
    """(1, 1, T, S) bool: query i (at position past_len + i) may attend to keys at positions <= its own."""
    query_pos = torch.arange(past_len, past_len + q_len, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(past_len + q_len, device=device)[None, :]  # (1, S)
    return (key_pos <= query_pos)[None, None]


def decoder_mask(
    attention_mask: torch.Tensor | None, q_len: int, past_len: int, device: torch.device
) -> tuple[torch.Tensor | None, bool]:
    """The mask for causal self-attention: (mask, is_causal) for `scaled_dot_product_attention`.

    attention_mask is (B, past_len + q_len), 1 for real tokens and 0 for padding, or None.
    Without padding no mask tensor is built: SDPA's own causal path is faster. A 4-D bool
    attention_mask (B, 1, T, S) is already the whole mask (a static KV cache builds its own) and is
    used as it is.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask, False
    if attention_mask is None:
        if past_len == 0:
            return None, q_len > 1
        if q_len == 1:
            return None, False
    total = past_len + q_len
    query_pos = torch.arange(past_len, total, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(total, device=device)[None, :]  # (1, S)
    mask = causal_mask(q_len, past_len, device)
    if attention_mask is not None:
        if attention_mask.shape[-1] != total:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions, expected {total}")
        # NOTE: a padding query still attends to itself, so no row is fully masked: an all -inf row
        # gives NaN, and NaN times a zero weight is still NaN in the next layer.
        mask = (mask & attention_mask.bool()[:, None, None, :]) | (key_pos == query_pos)[None, None]
    return mask, False


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The bidirectional mask (B, 1, 1, S) that hides padding keys (attention_mask 0), or None."""
    return None if attention_mask is None else attention_mask.bool()[:, None, None, :]


def add_bias(bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One float mask for `scaled_dot_product_attention`: the position bias on allowed positions and
    the most negative float where `mask` (bool, broadcastable to the scores) is False."""
    if mask is None:
        return bias
    # NOTE: the dtype's minimum, not -inf: a row with every key masked then averages instead of NaN.
    return bias.masked_fill(~mask, torch.finfo(bias.dtype).min)


class Attention(nn.Module):
    """Multi-head attention with n_kv_heads <= n_heads key/value heads (GQA when fewer): self-attention,
    or cross-attention when keys and values come from a `context` sequence."""

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
        scale: float | None = None,
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
        self.scale = scale  # of the scores; None is 1 / sqrt(d_head) (T5 uses 1, folded into its init)
        self.layer_idx = layer_idx

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | CrossKVCache | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, d_model) attends to itself, or to `context` (B, S, d_model) when given.

        mask: bool (True = may attend) or float (added to the scores: a position bias), broadcastable
        to (B, n_heads, T, S). cache: a KVCache for self-attention, a CrossKVCache for cross-attention.
        """
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, n_heads, T, d_head)
        if context is not None:
            if cache is not None:
                k, v = cache.get(self.layer_idx, lambda: self._keys_values(context))
            else:
                k, v = self._keys_values(context)
        else:
            k, v = self._keys_values(x)
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
            scale=self.scale,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head)  # (B, T, n_heads * d_head)
        return self.o_proj(out)

    def _keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, _ = source.shape
        k = self.k_proj(source).view(B, S, self.n_kv_heads, self.d_head).transpose(1, 2)
        v = self.v_proj(source).view(B, S, self.n_kv_heads, self.d_head).transpose(1, 2)
        return k, v  # (B, n_kv_heads, S, d_head) each
