"""The layers every model family shares."""

from lmforge.nn.attention import Attention, CrossContext, Feed, add_bias, causal_mask, padding_mask
from lmforge.nn.cache import CrossKVCache, KVCache, allocate_cache
from lmforge.nn.lora import LoRALinear, apply_lora, lora_state_dict, merge_lora
from lmforge.nn.mlp import MLP, GatedMLP
from lmforge.nn.norm import LayerNorm, RMSNorm
from lmforge.nn.position import (
    RelativePositionBias,
    RotaryEmbedding,
    apply_rope,
    relative_position_bucket,
    sinusoidal_table,
)

__all__ = [
    "MLP",
    "Attention",
    "CrossContext",
    "CrossKVCache",
    "Feed",
    "GatedMLP",
    "KVCache",
    "LayerNorm",
    "LoRALinear",
    "RMSNorm",
    "RelativePositionBias",
    "RotaryEmbedding",
    "add_bias",
    "allocate_cache",
    "apply_lora",
    "apply_rope",
    "causal_mask",
    "lora_state_dict",
    "merge_lora",
    "padding_mask",
    "relative_position_bucket",
    "sinusoidal_table",
]
