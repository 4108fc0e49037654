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
    """A fresh copy of preset `name` with fields replaced by `overrides`, its shape checked."""
    if name not in PRESETS:
        raise LmforgeError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    base = PRESETS[name]
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise LmforgeError(
            f"{', '.join(map(_flag, unknown))} does not apply to preset {name!r} (a {base.model_type} model, "
            f"whose shape takes {', '.join(_flag(k) for k in SHAPE_FIELDS if k in fields)})"
        )
    # Sizes the preset derived from the ones overridden are derived again (GPT-2's d_ff = 4 d_model,
    # Llama's d_head = d_model / n_heads and, with plain multi-head attention, n_kv_heads = n_heads).
    derived = {
        "d_ff": isinstance(base, GPT2Config) and base.d_ff == 4 * base.d_model,
        "d_head": isinstance(base, LlamaConfig) and base.d_head * base.n_heads == base.d_model,
        "n_kv_heads": isinstance(base, LlamaConfig) and base.n_kv_heads == base.n_heads,
    }
    for key, is_derived in derived.items():
        if is_derived and key not in overrides and {"d_model", "n_heads"} & set(overrides):
            fields[key] = None
    fields.update(overrides)
    splits = isinstance(base, GPT2Config | BertConfig) or (
        isinstance(base, LlamaConfig) and not fields["d_head"]
    )
    _check_shape(fields, f"preset {name!r}", heads_split_width=splits)
    return type(base)(**fields)


# The fields of a model's shape that `pretrain` takes as flags (--d-model 128 --n-layers 4 ...).
SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_ff", "dropout", "rope_theta")


def _check_shape(fields: dict, what: str, *, heads_split_width: bool) -> None:
    """One line unless the shape fits its family: positive sizes, heads that divide the width (where
    the head size derives from it), key/value heads that divide the heads, a dropout below 1."""
    sizes = ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_ff")
    for key in sizes:
        if fields.get(key) is not None and fields[key] < 1:
            raise LmforgeError(f"{_flag(key)} must be at least 1 for {what}, got {fields[key]}")
    if not 0 <= fields["dropout"] < 1:
        raise LmforgeError(f"--dropout must be in [0, 1) for {what}, got {fields['dropout']}")
    n_heads, n_kv_heads = fields["n_heads"], fields.get("n_kv_heads")
    if heads_split_width and fields["d_model"] % n_heads:
        raise LmforgeError(
            f"--n-heads {n_heads} does not divide --d-model {fields['d_model']} for {what}; choose a width "
            "that is a multiple of the heads"
        )
    if n_kv_heads is not None and n_heads % n_kv_heads:
        raise LmforgeError(
            f"--n-kv-heads {n_kv_heads} does not divide --n-heads {n_heads} for {what}; each key/value head "
            "serves an equal group of query heads"
        )
    d_head = fields.get("d_head") or fields["d_model"] // n_heads
    if "rope_theta" in fields and d_head % 2:
        raise LmforgeError(f"rotary positions need an even head size; {what} has {d_head}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
