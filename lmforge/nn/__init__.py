"""The layers every model family shares."""

from lmforge.nn.attention import Attention, KVCache, decoder_mask, decoder_positions
from lmforge.nn.mlp import MLP, GatedMLP
from lmforge.nn.norm import LayerNorm, RMSNorm
from lmforge.nn.position import RotaryEmbedding, apply_rope, sinusoidal_table

__all__ = [
    "MLP",
    "Attention",
    "GatedMLP",
    "KVCache",
    "LayerNorm",
    "RMSNorm",
    "RotaryEmbedding",
    "apply_rope",
    "decoder_mask",
    "decoder_positions",
    "sinusoidal_table",
]
