"""The layers every model family shares."""

from lmforge.nn.attention import (
    Attention,
    CrossKVCache,
    KVCache,
    add_bias,
    causal_mask,
    decoder_mask,
    decoder_positions,
    padding_mask,
)
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
    "CrossKVCache",
    "GatedMLP",
    "KVCache",
    "LayerNorm",
    "LoRALinear",
    "RMSNorm",
    "RelativePositionBias",
    "RotaryEmbedding",
    "add_bias",
    "apply_lora",
    "apply_rope",
    "causal_mask",
    "decoder_mask",
    "decoder_positions",
    "lora_state_dict",
    "merge_lora",
    "padding_mask",
    "relative_position_bucket",
    "sinusoidal_table",
]
