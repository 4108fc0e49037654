"""T5 (Raffel et al., 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer"), the encoder-decoder Transformer of Vaswani et al. (2017) with T5's choices.

- A bidirectional encoder reads the input; a causal decoder writes the output, attending to itself
  and, through cross-attention, to the encoder's output. Encoder and decoder share one embedding.
- No position embeddings: a learned scalar per (relative-distance bucket, head) is added to the
  attention scores, computed once per stack and shared by its layers.
- Pre-norm blocks with RMSNorm (scale only, no mean, no bias), no biases anywhere, and attention
  scores not scaled by 1/sqrt(d_head) (the initialisation accounts for it).
- T5 v1.0: ReLU feed-forward, and the output head is the embedding, read after rescaling the
  decoder output by d_model^-0.5. T5 v1.1 and Flan-T5: gated-GELU feed-forward, a separate head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lmforge.models.base import PretrainedModel
from lmforge.nn import (
    MLP,
    Attention,
    CrossContext,
    Feed,
    GatedMLP,
    KVCache,
    RelativePositionBias,
    RMSNorm,
    add_bias,
    allocate_cache,
    padding_mask,
)


@dataclass
class T5Config:
    vocab_size: int = 32128
    max_seq_len: int = 512  # longest input or output: relative positions set no hard limit
    d_model: int = 512
    n_layers: int = 6  # encoder blocks
    n_decoder_layers: int | None = None  # n_layers when None
    n_heads: int = 8
    d_head: int = 64
    d_ff: int = 2048
    dropout: float = 0.0
    norm_eps: float = 1e-6
    activation: str = "relu"  # "gelu_tanh" with is_gated_mlp for v1.1
    is_gated_mlp: bool = False
    n_buckets: int = 32  # relative position buckets
    max_distance: int = 128  # distances beyond this share the last bucket
    tie_embeddings: bool = True  # v1.0: head = embedding, decoder output rescaled by d_model^-0.5
    bos_token_id: int | None = None  # T5 has none
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1
    decoder_start_token_id: int = 0  # T5 starts decoding from the pad token

    model_type: ClassVar[str] = "t5"

    def __post_init__(self):
        self.n_decoder_layers = self.n_decoder_layers or self.n_layers


class T5Block(nn.Module):
    def __init__(self, config: T5Config, layer_idx: int, *, is_decoder: bool):
        super().__init__()

        def attention() -> Attention:
            return Attention(
                config.d_model,
                config.n_heads,
                d_head=config.d_head,
                dropout=config.dropout,
                scale=1.0,
                layer_idx=layer_idx,
            )

        self.attn_norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = attention()
        self.cross_attn_norm = RMSNorm(config.d_model, eps=config.norm_eps) if is_decoder else None
        self.cross_attn = attention() if is_decoder else None
        self.mlp_norm = RMSNorm(config.d_model, eps=config.norm_eps)
        if config.is_gated_mlp:
            self.mlp = GatedMLP(config.d_model, config.d_ff, config.activation)
        else:
            self.mlp = MLP(config.d_model, config.d_ff, config.activation, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, feed: Feed, context: CrossContext | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), feed))
        if self.cross_attn is not None:
            x = x + self.dropout(self.cross_attn(self.cross_attn_norm(x), context=context))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class T5Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention): blocks sharing one
    relative position bias, then a final norm."""

    def __init__(self, config: T5Config, n_layers: int, *, is_decoder: bool):
        super().__init__()
        self.is_decoder = is_decoder
        self.pos_embed = RelativePositionBias(
            config.n_heads, config.n_buckets, config.max_distance, is_bidirectional=not is_decoder
        )
        self.blocks = nn.ModuleList(T5Block(config, i, is_decoder=is_decoder) for i in range(n_layers))
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, *, attention_mask=None, cache=None, context=None):
        """x (B, T, d_model) -> (B, T, d_model). attention_mask (B, T) marks x's real tokens 1 and
        padding 0; with a cache (decoder), x is stored in it and attends to what it holds; context is
        what the decoder's cross-attention reads."""
        T = x.shape[1]
        if cache is not None:
            feed = cache.feed(T, attention_mask)
        else:
            feed = Feed.uncached(T, attention_mask, device=x.device, is_causal=self.is_decoder)
        # The bias (and the mask folded into it) is computed once and shared by every block.
        bias = self.pos_embed.between(feed.slots, feed.n_keys).to(x.dtype)
        feed = dataclasses.replace(feed, mask=add_bias(bias, feed.full_mask()), is_causal=False)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, feed, context)
        return self.dropout(self.norm(x))


class T5(PretrainedModel):
    """Encoder-decoder: `encode` the input once, then `decode` output tokens against it."""

    is_encoder_decoder = True

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, config.n_layers, is_decoder=False)
        self.decoder = T5Stack(config, config.n_decoder_layers, is_decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        decoder_input_ids: torch.Tensor,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T_dec, vocab_size) of the token after each decoder input token."""
        encoded = self.encode(input_ids, attention_mask)
        x = self.decode(
            decoder_input_ids,
            encoded,
            attention_mask=attention_mask,
            decoder_attention_mask=decoder_attention_mask,
        )
        return self.logits(x)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's final hidden states (B, S, d_model); attention_mask (B, S) is 1 for real tokens."""
        return self.encoder(self.embed(input_ids), attention_mask=attention_mask)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoded: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The decoder's final hidden states (B, T, d_model) for new decoder tokens.

        attention_mask is the encoder's (B, S); with a cache, the new tokens attend to the cached ones
        and the cross-attention keys and values are computed once.
        """
        context = CrossContext(
            encoded, padding_mask(attention_mask), cache.cross if cache is not None else None
        )
        x = self.embed(decoder_input_ids)
        return self.decoder(x, attention_mask=decoder_attention_mask, cache=cache, context=context)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits from decoder hidden states."""
        if self.config.tie_embeddings:
            x = x * self.config.d_model**-0.5  # v1.0: the embedding is read at its own scale
        return self.lm_head(x)

    def new_cache(
        self,
        rows: int,
        capacity: int | None = None,
        dtype: torch.dtype | None = None,
        *,
        is_static: bool = False,
    ) -> KVCache:
        """An empty decoder cache (self- and cross-attention) for `rows` sequences of up to `capacity`
        decoder tokens (max_seq_len when None)."""
        return allocate_cache(
            self.decoder.blocks,
            rows,
            capacity or self.config.max_seq_len,
            dtype=dtype or self.dtype,
            device=self.device,
            is_static=is_static,
        )

    @torch.no_grad()
    def init_weights(self) -> None:
        """T5's initialisation (Mesh TensorFlow): each matrix N(0, 1/fan_in), with the query also
        divided by sqrt(d_head) in place of scaling the scores; embedding N(0, 1); norms 1."""
        c = self.config
        fan_in = {"q_proj": c.d_model * c.d_head, "o_proj": c.n_heads * c.d_head, "down_proj": c.d_ff}
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = fan_in.get(name.rsplit(".", 1)[-1], c.d_model) ** -0.5
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, RelativePositionBias):
                nn.init.normal_(module.weight, std=c.d_model**-0.5)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        nn.init.normal_(self.embed.weight, std=1.0)
