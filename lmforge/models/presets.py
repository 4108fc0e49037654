"""Named model sizes, from debug-sized `tiny` (trains in seconds) to the published GPT-2 and Llama shapes.

`vocab_size` is a placeholder where a tokenizer trained alongside the model decides it.
"""

from __future__ import annotations

import dataclasses

from lmforge.errors import LmforgeError
from lmforge.models.bert import BertConfig
from lmforge.models.gpt2 import GPT2Config
from lmforge.models.llama import LlamaConfig
from lmforge.models.t5 import T5Config

PRESETS: dict[str, GPT2Config | LlamaConfig | BertConfig] = {
    # A few hundred thousand parameters: a training step takes milliseconds on one core.
    "tiny": GPT2Config(vocab_size=512, max_seq_len=256, d_model=64, n_layers=4, n_heads=4),
    # The model `make demo` pretrains on 2 CPU cores in under ten minutes (3.7M parameters with a 2,048-token vocabulary).
    "demo": GPT2Config(vocab_size=2048, max_seq_len=256, d_model=256, n_layers=4, n_heads=4),
    "gpt2": GPT2Config(),  # 124M
    "gpt2-medium": GPT2Config(d_model=1024, n_layers=24, n_heads=16),  # 355M
    "llama-tiny": LlamaConfig(
        vocab_size=512,
        max_seq_len=256,
        d_model=64,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        d_ff=172,
        norm_eps=1e-5,
    ),
    "llama-demo": LlamaConfig(
        vocab_size=4096,
        max_seq_len=256,
        d_model=384,
        n_layers=6,
        n_heads=6,
        n_kv_heads=2,
        d_ff=1024,
        norm_eps=1e-5,
    ),
    # The Llama 3.2 1B shape.
    "llama-1b": LlamaConfig(
        vocab_size=128256,
        max_seq_len=131072,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        d_head=64,
        d_ff=8192,
        norm_eps=1e-5,
        rope_theta=500000.0,
        tie_embeddings=True,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    # An encoder for tests and masked-LM pretraining on a CPU (0.25M parameters).
    "bert-tiny": BertConfig(
        vocab_size=512, max_seq_len=128, d_model=64, n_layers=4, n_heads=4, d_ff=256, use_mlm_head=True
    ),
    "bert-base": BertConfig(use_mlm_head=True),  # 110M, the shape of bert-base-uncased
    # An encoder-decoder for tests and span-corruption pretraining on a CPU (0.35M parameters),
    # in the T5 v1.1 recipe: gated-GELU feed-forward, separate output head.
    "t5-tiny": T5Config(
        vocab_size=512,
        max_seq_len=256,
        d_model=64,
        n_layers=3,
        n_heads=4,
        d_head=16,
        d_ff=128,
        activation="gelu_tanh",
        is_gated_mlp=True,
        tie_embeddings=False,
    ),
    # The encoder-decoder counterpart of `demo` (7M parameters with a 2,048-token vocabulary): span-pretrained
    # on the built-in corpus, then fine-tuned for the stdlib-docstring summarisation task.
    "t5-demo": T5Config(
        vocab_size=2048,
        max_seq_len=256,
        d_model=256,
        n_layers=4,
        n_heads=4,
        d_head=64,
        d_ff=512,
        activation="gelu_tanh",
        is_gated_mlp=True,
        tie_embeddings=False,
    ),
    "t5-small": T5Config(),  # 60M, the shape of the original t5-small (v1.0: ReLU, tied head)
}


def get_preset(name: str, **overrides) -> GPT2Config | LlamaConfig | BertConfig:
    """A fresh copy of preset `name` with fields replaced by `overrides`."""
    if name not in PRESETS:
        raise LmforgeError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    base = PRESETS[name]
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    if "d_model" in overrides and "d_ff" not in overrides and isinstance(base, GPT2Config):
        fields["d_ff"] = None  # keep d_ff = 4 d_model
    fields.update(overrides)
    return type(base)(**fields)
