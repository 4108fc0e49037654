"""BERT (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers") and RoBERTa
(Liu et al., 2019), which is the same network with different position ids and one token type.

An encoder-only Transformer: token + learned position + token-type embeddings, normalised;
post-LayerNorm blocks (`x = norm(x + attn(x))`, `x = norm(x + mlp(x))`) whose attention sees the
whole sequence, padding excepted; exact GELU. Two optional heads read the last hidden states: the
pooler (dense + tanh on the first token, [CLS]) and the masked-LM head (dense + GELU + LayerNorm,
then a projection tied to the token embedding, with its own bias).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lmforge.models.base import PretrainedModel
from lmforge.nn import MLP, Attention, Feed, LayerNorm, padding_mask
from lmforge.nn.mlp import get_activation


@dataclass
class BertConfig:
    vocab_size: int = 30522
    max_seq_len: int = 512
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    dropout: float = 0.1
    norm_eps: float = 1e-12
    activation: str = "gelu"
    n_token_types: int = 2
    use_pooler: bool = True
    use_mlm_head: bool = False
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    model_type: ClassVar[str] = "bert"

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")


@dataclass
class RobertaConfig(BertConfig):
    vocab_size: int = 50265
    max_seq_len: int = 514  # 512 positions after the offset of pad_token_id + 1
    norm_eps: float = 1e-5
    n_token_types: int = 1
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2

    model_type: ClassVar[str] = "roberta"


def encoder_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The (B, 1, 1, T) boolean key mask for bidirectional attention, or None without padding."""
    mask = padding_mask(attention_mask)
    if mask is None:
        return None
    # NOTE: a row of padding only would give NaN; let it attend everywhere (its output is unused).
    return mask | ~mask.any(dim=-1, keepdim=True)


class BertBlock(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attn = Attention(config.d_model, config.n_heads, bias=True, dropout=config.dropout)
        self.attn_norm = LayerNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config.d_model, config.d_ff, config.activation, bias=True)
        self.mlp_norm = LayerNorm(config.d_model, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.attn(x, Feed(mask))))
        return self.mlp_norm(x + self.dropout(self.mlp(x)))


class MaskedLMHead(nn.Module):
    """Logits over the vocabulary from hidden states; `proj.weight` is tied to the token embedding."""

    def __init__(self, config: BertConfig, embed: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.act = get_activation(config.activation)
        self.norm = LayerNorm(config.d_model, eps=config.norm_eps)
        self.proj = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.proj.weight = embed.weight
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.act(self.dense(x)))) + self.bias


class Bert(PretrainedModel):
    """The encoder; `forward` gives masked-LM logits when the model has that head, else hidden states."""

    is_encoder_decoder = False

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = nn.Embedding(config.max_seq_len, config.d_model)
        self.type_embed = nn.Embedding(config.n_token_types, config.d_model)
        self.embed_norm = LayerNorm(config.d_model, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(BertBlock(config) for _ in range(config.n_layers))
        self.pooler = nn.Linear(config.d_model, config.d_model) if config.use_pooler else None
        self.lm_head = MaskedLMHead(config, self.embed) if config.use_mlm_head else None
        self.init_weights()

    @property
    def max_positions(self) -> int:
        """The longest input, in tokens, that the position table covers."""
        offset = self.config.pad_token_id + 1 if self.config.model_type == "roberta" else 0
        return self.config.max_seq_len - offset

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """0, 1, 2, ... for BERT. RoBERTa (as fairseq) counts real tokens from pad_token_id + 1 and
        gives padding tokens the position pad_token_id."""
        if self.config.model_type != "roberta":
            return torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        is_real = input_ids.ne(self.config.pad_token_id).long()
        return is_real.cumsum(-1) * is_real + self.config.pad_token_id

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last hidden states (B, T, d_model); attention_mask (B, T) is 1 for real tokens."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embed(input_ids) + self.pos_embed(self.position_ids(input_ids))
        x = self.dropout(self.embed_norm(x + self.type_embed(token_type_ids)))
        mask = encoder_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask=mask)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked-LM logits (B, T, vocab_size) with an MLM head, else the last hidden states."""
        x = self.hidden(input_ids, attention_mask, token_type_ids)
        return self.lm_head(x) if self.lm_head is not None else x

    def pooled(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The pooler output (B, d_model): tanh(dense(hidden state of the first token))."""
        if self.pooler is None:
            raise ValueError("this model has no pooler (build it with use_pooler=True)")
        return torch.tanh(self.pooler(self.hidden(input_ids, attention_mask, token_type_ids)[:, 0]))

    def init_weights(self) -> None:
        """As BERT: N(0, 0.02) weights, zero biases, LayerNorms at identity."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
