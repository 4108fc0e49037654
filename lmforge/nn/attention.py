"""Multi-head attention `softmax(Q K^T / sqrt(d_k)) V` (Vaswani et al., 2017) on PyTorch's
`scaled_dot_product_attention`, with grouped-query attention (Ainslie et al., 2023), causal and
padding masks, and what an encoder-decoder adds: cross-attention to another sequence and an additive
position bias on the scores (T5).

The tokens of one forward pass reach self-attention as a `Feed`: their position ids, the mask they
attend with, and where their keys and values go. Without a cache `Feed.uncached` builds it from the
padding mask; with one, the cache does (`KVCache.feed`, lmforge/nn/cache.py), as it alone knows what
each row holds. Cross-attention reads a `CrossContext` instead: the other sequence and its padding.

`reference_attention` spells the formula out, one line per step with its shapes, and agrees with the
fast path within float rounding (tests/nn/test_reference_attention.py); `model.set_attention("reference")`
(or `--attention reference` on the command line) runs a whole model on it, to step through in a debugger;
`recording_attention(model)` runs it there and keeps each layer's probabilities, which
`lmforge inspect attention` draws.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.nn.fuse import stack_linears
from lmforge.nn.position import apply_rope

ATTENTION_KERNELS = ("sdpa", "reference")  # PyTorch's fused kernel; the formula written out

if TYPE_CHECKING:
    from lmforge.nn.cache import CrossKVCache, KVCache


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The bidirectional mask (B, 1, 1, S) that hides padding keys (attention_mask 0), or None."""
    return None if attention_mask is None else attention_mask.bool()[:, None, None, :]


def causal_mask(query_slots: torch.Tensor, n_keys: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, T, S) bool, S = n_keys: the query at slot q may attend to the keys at slots <= q that hold
    real tokens (`valid` (B, S); every slot when None). query_slots is (B, T), B may be 1."""
    key_slots = torch.arange(n_keys, device=query_slots.device)  # (S,)
    query = query_slots[:, :, None]  # (B, T, 1)
    allowed = key_slots <= query
    if valid is not None:
        # NOTE: a padding query still attends to itself, so no row is fully masked: an all -inf row
        # gives NaN, and NaN times a zero weight is still NaN in the next layer.
        allowed = (allowed & valid[:, None, :]) | (key_slots == query)
    return allowed[:, None]


def add_bias(bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One float mask for `scaled_dot_product_attention`: the position bias on allowed positions and
    the most negative float where `mask` (bool, broadcastable to the scores) is False."""
    if mask is None:
        return bias
    # NOTE: the dtype's minimum, not -inf: a row with every key masked then averages instead of NaN.
    return bias.masked_fill(~mask, torch.finfo(bias.dtype).min)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    enable_gqa: bool = False,
    record: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k) + M) V, step by step; the arguments of `scaled_dot_product_attention`.

    q (B, n_heads, T, d_head) holds the queries of T tokens; k and v (B, n_kv_heads, S, d_head) the keys
    and values of the S tokens they may attend to. attn_mask: bool (True = may attend) or float (added
    to the scores: T5's position bias), broadcastable to (B, n_heads, T, S). record: a list that the
    probabilities (B, n_heads, T, S) are appended to, to look at them.
    """
    n_heads, d_head = q.shape[1], q.shape[-1]
    if enable_gqa:  # grouped-query attention: each key/value head serves n_heads / n_kv_heads query heads
        k = k.repeat_interleave(n_heads // k.shape[1], dim=1)  # (B, n_heads, S, d_head)
        v = v.repeat_interleave(n_heads // v.shape[1], dim=1)  # (B, n_heads, S, d_head)
    scale = 1.0 / math.sqrt(d_head) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, n_heads, T, S): how well each query matches each key
    if is_causal:  # query t sees keys 0..t (the last T of the S keys are the queries' own)
        T, S = scores.shape[-2:]
        attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)  # (T, S)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        # NOTE: the dtype's minimum, not -inf: a row with every key masked averages instead of NaN.
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    elif attn_mask is not None:
        scores = scores + attn_mask  # a position bias (and the minimum where masked)
    probs = scores.softmax(dim=-1)  # (B, n_heads, T, S): each query's weights over the keys sum to 1
    if record is not None:
        record.append(probs.detach())
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v  # (B, n_heads, T, d_head): the weighted average of the values


@dataclass
class Feed:
    """The tokens of one forward pass (B, T), as self-attention sees them.

    mask: bool (True = may attend) or float (added to the scores: a position bias), broadcastable to
    (B, n_heads, T, S); None is every key, or SDPA's own causal mask with `is_causal`.
    positions: position ids (B, T); slots: where the tokens sit in their rows (B, T), the cache slots
    or 0..T-1 without a cache (B may be 1 in both); n_keys: S, the keys attended.
    cache: where the new keys and values go (None: nowhere): at `index` (B, n_kv_heads, T, d_head),
    the slots repeated for a scatter, or from `start` on in every row when the rows are aligned.
    """

    mask: torch.Tensor | None = None
    is_causal: bool = False
    positions: torch.Tensor | None = None
    slots: torch.Tensor | None = None
    n_keys: int | None = None
    cache: KVCache | None = None
    index: torch.Tensor | None = None
    start: int | None = None

    @classmethod
    def uncached(
        cls,
        n: int,
        attention_mask: torch.Tensor | None = None,
        *,
        device: torch.device,
        is_causal: bool = True,
    ) -> Feed:
        """n tokens that attend among themselves alone: causally (a decoder) or to all (an encoder).

        attention_mask (B, n) is 0 at padding, anywhere in a row; a causal row counts its positions
        from its first real token, so a left-padded row sees the positions it would see alone.
        """
        slots = torch.arange(n, device=device)[None]  # (1, n)
        if not is_causal:
            return cls(padding_mask(attention_mask), positions=slots, slots=slots, n_keys=n)
        if attention_mask is None:
            # Without padding no mask tensor is built: SDPA's own causal path is faster.
            return cls(is_causal=n > 1, positions=slots, slots=slots, n_keys=n)
        real = attention_mask.bool()
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)
        return cls(causal_mask(slots, n, real), positions=positions, slots=slots, n_keys=n)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a layer's new keys and values (B, n_kv_heads, T, d_head); return all it attends to."""
        return (k, v) if self.cache is None else self.cache.store(layer, self, k, v)

    def full_mask(self) -> torch.Tensor | None:
        """The mask as a tensor (SDPA's causal flag spelled out), to fold into a position bias."""
        return causal_mask(self.slots, self.n_keys) if self.is_causal else self.mask


@dataclass
class CrossContext:
    """What cross-attention reads: the other sequence (B, S, d_model), its padding mask (B, 1, 1, S)
    or None, and where its keys and values are cached (they depend on it alone, so they are computed
    at the first decoding step and reused by every later one)."""

    states: torch.Tensor
    mask: torch.Tensor | None = None
    cache: CrossKVCache | None = None

    def keys_values(self, layer: int, project) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's keys and values of the context; `project(states)` computes them."""
        if self.cache is None:
            return project(self.states)
        return self.cache.get(layer, lambda: project(self.states))


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
        self.kernel = "sdpa"  # or "reference" (ATTENTION_KERNELS; PretrainedModel.set_attention)
        self.record: list[torch.Tensor] | None = None  # where the reference kernel appends its probs
        self.qkv_proj: nn.Module | None = None  # q_proj, k_proj and v_proj in one, once fused (fuse_qkv)

    def forward(
        self,
        x: torch.Tensor,
        feed: Feed | None = None,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        context: CrossContext | None = None,
    ) -> torch.Tensor:
        """x (B, T, d_model) attends to itself as `feed` says (None: to every token, uncached), or,
        given a `context`, to the other sequence it holds. rope: the (cos, sin) of x's positions."""
        B, T, _ = x.shape
        if context is not None:
            q = self._heads(self.q_proj(x), self.n_heads)  # (B, n_heads, T, d_head)
            k, v = context.keys_values(self.layer_idx, self._keys_values)
            mask, is_causal = context.mask, False
        else:
            feed = feed or Feed()
            q, k, v = self._queries_keys_values(x)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            k, v = feed.update(self.layer_idx, k, v)
            mask, is_causal = feed.mask, feed.is_causal
        attend = F.scaled_dot_product_attention
        if self.kernel == "reference":
            attend = functools.partial(reference_attention, record=self.record)
        out = attend(
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

    def _heads(self, projected: torch.Tensor, n_heads: int) -> torch.Tensor:
        """(B, T, n_heads * d_head) -> (B, n_heads, T, d_head)."""
        B, T, _ = projected.shape
        return projected.view(B, T, n_heads, self.d_head).transpose(1, 2)

    def _keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.k_proj(source), self.v_proj(source)
        return self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)  # (B, n_kv_heads, S, d_head)

    def _queries_keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention's q (B, n_heads, T, d_head), k and v (B, n_kv_heads, T, d_head): three
        products, or one where the projections are fused (`fuse_qkv`)."""
        if self.qkv_proj is None:
            return self._heads(self.q_proj(x), self.n_heads), *self._keys_values(x)
        n_q, n_kv = self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        q, k, v = self.qkv_proj(x).split((n_q, n_kv, n_kv), dim=-1)
        return self._heads(q, self.n_heads), self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)

    def fuse_qkv(self) -> bool:
        """For inference: replace q_proj, k_proj and v_proj by one `qkv_proj` (their rows stacked), so
        self-attention makes one matrix product where it made three. False (nothing done) where they
        cannot be stacked (LoRA layers: lmforge/nn/fuse.py) or are fused already. The model then
        computes the same values but no longer has its checkpoint's layers (it cannot be saved or trained)."""
        projections = [getattr(self, name, None) for name in ("q_proj", "k_proj", "v_proj")]
        fused = None if self.qkv_proj is not None else stack_linears(projections)
        if fused is None:
            return False
        del self.q_proj, self.k_proj, self.v_proj
        self.qkv_proj = fused
        return True


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Run every attention layer of `model` on the reference kernel, keeping what it computes:
    {module name: [probabilities (B, n_heads, T, S) of each call]}, in the model's order. The kernels
    (and any records) the layers had are given back on leaving."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, Attention)}
    saved = {name: (m.kernel, m.record) for name, m in layers.items()}
    records: dict[str, list[torch.Tensor]] = {}
    for name, m in layers.items():
        m.kernel, m.record = "reference", records.setdefault(name, [])
    try:
        yield records
    finally:
        for name, m in layers.items():
            m.kernel, m.record = saved[name]
