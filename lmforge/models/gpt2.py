"""GPT-2 (Radford et al., 2019, "Language Models are Unsupervised Multitask Learners").

A decoder-only Transformer: learned absolute positions, pre-LayerNorm blocks (norm before each
sub-layer, one more at the end), GELU feed-forward, biases everywhere, and an output projection
tied to the token embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lmforge.models.decoder import CausalLM
from lmforge.nn import MLP, Attention, Feed, LayerNorm


@dataclass
class GPT2Config:
    vocab_size: int = 50257
    max_seq_len: int = 1024
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int | None = None  # 4 * d_model when None
    dropout: float = 0.0
    norm_eps: float = 1e-5
    activation: str = "gelu_tanh"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    model_type: ClassVar[str] = "gpt2"

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")


class GPT2Block(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.attn_norm = LayerNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(
            config.d_model, config.n_heads, bias=True, dropout=config.dropout, layer_idx=layer_idx
        )
        self.mlp_norm = LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config.d_model, config.d_ff, config.activation, bias=True)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, feed: Feed, rope=None) -> torch.Tensor:
        # NOTE: dropout is the identity outside training; not calling it saves a module call per
        # sub-layer, which a small model's decode step notices.
        attended = self.attn(self.attn_norm(x), feed, rope=rope)
        x = x + (self.dropout(attended) if self.training else attended)
        transformed = self.mlp(self.mlp_norm(x))
        return x + (self.dropout(transformed) if self.training else transformed)


class GPT2(CausalLM):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layers))
        self.norm = LayerNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied: the output layer reads the input embedding
        self.init_weights()

    def embed_input(self, input_ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Token plus learned position embeddings; no rotary angles."""
        x = self.embed(input_ids) + self.pos_embed(positions)
        return (self.dropout(x) if self.training else x), None
