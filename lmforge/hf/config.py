"""Hugging Face `config.json` <-> lmforge config dataclasses.

Each family has a table of (lmforge field, Hugging Face key); values that need translating
(activation names, rope parameters, dropout) are handled beside the table.
"""

from __future__ import annotations

import dataclasses

from lmforge.errors import LmforgeError
from lmforge.models import FAMILIES, GPT2Config, LlamaConfig

COMMON_KEYS = [
    ("vocab_size", "vocab_size"),
    ("bos_token_id", "bos_token_id"),
    ("eos_token_id", "eos_token_id"),
    ("pad_token_id", "pad_token_id"),
]

GPT2_KEYS = COMMON_KEYS + [
    ("max_seq_len", "n_positions"),
    ("d_model", "n_embd"),
    ("n_layers", "n_layer"),
    ("n_heads", "n_head"),
    ("d_ff", "n_inner"),
    ("norm_eps", "layer_norm_epsilon"),
    ("dropout", "resid_pdrop"),
]
LLAMA_KEYS = COMMON_KEYS + [
    ("max_seq_len", "max_position_embeddings"),
    ("d_model", "hidden_size"),
    ("n_layers", "num_hidden_layers"),
    ("n_heads", "num_attention_heads"),
    ("n_kv_heads", "num_key_value_heads"),
    ("d_head", "head_dim"),
    ("d_ff", "intermediate_size"),
    ("norm_eps", "rms_norm_eps"),
    ("dropout", "attention_dropout"),
    ("tie_embeddings", "tie_word_embeddings"),
    ("attention_bias", "attention_bias"),
    ("mlp_bias", "mlp_bias"),
]
KEYS = {"gpt2": GPT2_KEYS, "llama": LLAMA_KEYS}

# Hugging Face activation names -> ours; several spellings are the same function.
HF_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}


def from_hf_config(hf: dict):
    """The lmforge config for a Hugging Face config.json dict."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise LmforgeError(
            f"unsupported model type {model_type!r} in config.json; supported: {', '.join(FAMILIES)}"
        )
    config_cls, _ = FAMILIES[model_type]
    fields = {ours: hf[theirs] for ours, theirs in KEYS[model_type] if hf.get(theirs) is not None}
    if model_type == "gpt2":
        _check_gpt2(hf)
        fields["activation"] = _activation(hf.get("activation_function", "gelu_new"))
    else:
        if _activation(hf.get("hidden_act", "silu")) != "silu":
            raise LmforgeError(f"unsupported llama hidden_act {hf['hidden_act']!r}; only silu is supported")
        fields.update(_rope_fields(hf))
    try:
        return config_cls(**fields)
    except (TypeError, ValueError) as e:
        raise LmforgeError(f"invalid {model_type} config.json: {e}") from None


def to_hf_config(config) -> dict:
    """A config.json dict that `transformers.AutoConfig` reads back to the same model."""
    hf = {"model_type": config.model_type, "architectures": [ARCHITECTURES[config.model_type]]}
    for ours, theirs in KEYS[config.model_type]:
        hf[theirs] = getattr(config, ours)
    if isinstance(config, GPT2Config):
        hf["activation_function"] = {"gelu_tanh": "gelu_new"}.get(config.activation, config.activation)
        hf["embd_pdrop"] = hf["attn_pdrop"] = config.dropout
        hf["tie_word_embeddings"] = True
    elif isinstance(config, LlamaConfig):
        hf["hidden_act"] = "silu"
        hf["rope_theta"] = config.rope_theta
        hf["rope_scaling"] = config.rope_scaling
    hf["torch_dtype"] = "float32"
    return hf


def _activation(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise LmforgeError(f"unsupported activation {name!r}; supported: {', '.join(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def _check_gpt2(hf: dict) -> None:
    # Variants of GPT-2 attention that no common checkpoint uses; refuse rather than differ silently.
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise LmforgeError(
            "unsupported GPT-2 attention scaling (scale_attn_by_inverse_layer_idx or "
            "scale_attn_weights=false); only the standard 1/sqrt(d_head) is supported"
        )
    if hf.get("add_cross_attention"):
        raise LmforgeError("GPT-2 with cross-attention is not supported")


def _rope_fields(hf: dict) -> dict:
    # transformers 5 writes `rope_parameters` (with rope_theta inside); older files write
    # `rope_theta` and `rope_scaling` at the top level.
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    return {"rope_theta": float(theta), "rope_scaling": None if kind == "default" else params}


def config_fields(config) -> dict:
    """The config as a plain dict (for logs and recipes)."""
    return {"model_type": config.model_type, **dataclasses.asdict(config)}
