"""Position information: rotary embeddings (Su et al., 2021, "RoFormer") with the scaling
variants real checkpoints use, the fixed sinusoidal table of Vaswani et al. (2017), and T5's
bucketed relative position bias (Raffel et al., 2020).

Learned absolute positions (GPT-2) are a plain `nn.Embedding` in the family file.
Rotary layout follows the Hugging Face convention: the two rotated halves of each head are the
first and second half of its dimensions (`rotate_half`), not interleaved pairs.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError

ROPE_TYPES = ("default", "linear", "llama3")


def rope_frequencies(d_head: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies `theta^(-2i/d)` for i < d/2, adjusted by a rope-scaling dict."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.int64).float() / d_head))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3_frequencies(inv_freq, scaling)
    raise LmforgeError(f"unsupported rope scaling {kind!r}; supported: {', '.join(ROPE_TYPES)}")


def _llama3_frequencies(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
    # interpolated smoothly.
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Maps position ids (B, T) to the cos and sin tables (B, T, d_head) that `apply_rope` uses."""

    def __init__(self, d_head: int, theta: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        self.register_buffer("inv_freq", rope_frequencies(d_head, theta, scaling), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # (B, T, d_head / 2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (B, T, d_head)
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, n_heads, T, d_head) by the angles of its positions."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, d_head)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


def sinusoidal_table(max_seq_len: int, d_model: int) -> torch.Tensor:
    """The fixed encoding PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    pos = torch.arange(max_seq_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_seq_len, d_model)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return table


def relative_position_bucket(
    relative_position: torch.Tensor, *, is_bidirectional: bool, n_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket (Raffel et al., 2020, section 2.1) of each key - query distance, in [0, n_buckets).

    Half the buckets hold exact distances 0, 1, 2, ...; the other half grow logarithmically up to
    max_distance, beyond which all distances share the last bucket. Bidirectional (encoder) buckets
    split the range between keys before and after the query; a causal decoder sees only keys before.
    """
    buckets = torch.zeros_like(relative_position)
    if is_bidirectional:
        n_buckets //= 2
        buckets += (relative_position > 0).long() * n_buckets  # keys after the query
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = n_buckets // 2
    # NOTE: log(0) is -inf for distance 0; those entries are small and take the exact branch.
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    far = max_exact + (log_ratio * (n_buckets - max_exact)).long()
    far = far.clamp(max=n_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, far)


class RelativePositionBias(nn.Module):
    """T5's learned scalar per (bucket, head), added to the attention scores: (B, n_heads, T, S).

    T5 computes it once per stack and shares it across the stack's layers.
    """

    def __init__(self, n_heads: int, n_buckets: int = 32, max_distance: int = 128, *, is_bidirectional: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_buckets, n_heads))
        self.n_buckets, self.max_distance = n_buckets, max_distance
        self.is_bidirectional = is_bidirectional

    def forward(self, q_len: int, k_len: int, past_len: int = 0) -> torch.Tensor:
        """The bias for queries at positions past_len.. past_len + q_len over keys 0 .. k_len."""
        query_pos = torch.arange(past_len, past_len + q_len, device=self.weight.device)[None]  # (1, T)
        return self.between(query_pos, k_len)

    def between(self, query_pos: torch.Tensor, k_len: int) -> torch.Tensor:
        """The bias (B, n_heads, T, S) for queries at positions query_pos (B, T), B may be 1, over
        keys at positions 0 .. k_len - 1 (a KV cache's slots: rows may be at different positions)."""
        key_pos = torch.arange(k_len, device=query_pos.device)  # (S,)
        buckets = relative_position_bucket(
            key_pos - query_pos[:, :, None],  # (B, T, S)
            is_bidirectional=self.is_bidirectional,
            n_buckets=self.n_buckets,
            max_distance=self.max_distance,
        )
        return F.embedding(buckets, self.weight).permute(0, 3, 1, 2)  # (B, n_heads, T, S)
