"""Llama (Touvron et al., 2023; Llama 3, Grattafiori et al., 2024).

A decoder-only Transformer that differs from GPT-2 in four places: rotary position embeddings
instead of learned ones, RMSNorm instead of LayerNorm, a SwiGLU gated feed-forward, and
grouped-query attention (fewer key/value heads than query heads). No biases; the output head may
or may not share the embedding matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lmforge.models.decoder import CausalLM
from lmforge.nn import Attention, Feed, GatedMLP, RMSNorm, RotaryEmbedding


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    max_seq_len: int = 2048
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # n_heads when None (plain multi-head attention)
    d_head: int | None = None  # d_model // n_heads when None
    d_ff: int = 11008
    dropout: float = 0.0
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3" | "linear", "factor": ..., ...}
    tie_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    model_type: ClassVar[str] = "llama"

    def __post_init__(self):
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        self.d_head = self.d_head or self.d_model // self.n_heads


class LlamaBlock(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(
            config.d_model,
            config.n_heads,
            config.n_kv_heads,
            config.d_head,
            bias=config.attention_bias,
            dropout=config.dropout,
            layer_idx=layer_idx,
        )
        self.mlp_norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = GatedMLP(config.d_model, config.d_ff, "silu", bias=config.mlp_bias)

    def forward(self, x: torch.Tensor, feed: Feed, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), feed, rope=rope)
        return x + self.mlp(self.mlp_norm(x))


class Llama(CausalLM):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = RotaryEmbedding(config.d_head, config.rope_theta, config.rope_scaling)
        self.blocks = nn.ModuleList(LlamaBlock(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.init_weights()

    def embed_input(
        self, input_ids: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Token embeddings, and the rotary angles (cos, sin) of their positions for every layer."""
        return self.embed(input_ids), self.pos_embed(positions)
