"""Hugging Face `config.json` <-> lmforge config dataclasses.

Each family has a table of (lmforge field, Hugging Face key); values that need translating
(activation names, rope parameters, dropout) are handled beside the table.
"""

from __future__ import annotations

import dataclasses

from lmforge.errors import LmforgeError
from lmforge.models import FAMILIES, BertConfig, GPT2Config, LlamaConfig, T5Config

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
BERT_KEYS = COMMON_KEYS + [
    ("max_seq_len", "max_position_embeddings"),
    ("d_model", "hidden_size"),
    ("n_layers", "num_hidden_layers"),
    ("n_heads", "num_attention_heads"),
    ("d_ff", "intermediate_size"),
    ("norm_eps", "layer_norm_eps"),
    ("dropout", "hidden_dropout_prob"),
    ("n_token_types", "type_vocab_size"),
]
T5_KEYS = COMMON_KEYS + [
    ("max_seq_len", "n_positions"),
    ("d_model", "d_model"),
    ("n_layers", "num_layers"),
    ("n_decoder_layers", "num_decoder_layers"),
    ("n_heads", "num_heads"),
    ("d_head", "d_kv"),
    ("d_ff", "d_ff"),
    ("norm_eps", "layer_norm_epsilon"),
    ("dropout", "dropout_rate"),
    ("n_buckets", "relative_attention_num_buckets"),
    ("max_distance", "relative_attention_max_distance"),
    ("decoder_start_token_id", "decoder_start_token_id"),
]
KEYS = {"gpt2": GPT2_KEYS, "llama": LLAMA_KEYS, "bert": BERT_KEYS, "roberta": BERT_KEYS, "t5": T5_KEYS}

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
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "t5": "T5ForConditionalGeneration"}
# Encoders: the base model, or the masked-LM model when it has that head.
ENCODER_ARCHITECTURES = {
    "bert": ("BertModel", "BertForMaskedLM"),
    "roberta": ("RobertaModel", "RobertaForMaskedLM"),
}
# Task heads (lmforge/models/heads.py): (model_type, task) <-> the transformers class with that head.
HEAD_ARCHITECTURES = {
    ("bert", "classification"): "BertForSequenceClassification",
    ("bert", "span_qa"): "BertForQuestionAnswering",
    ("gpt2", "classification"): "GPT2ForSequenceClassification",
    ("llama", "classification"): "LlamaForSequenceClassification",
}


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
    elif model_type in ENCODER_ARCHITECTURES:
        fields.update(_encoder_fields(hf))
    elif model_type == "t5":
        fields.update(_t5_fields(hf))
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
    if isinstance(config, BertConfig):
        architecture = ENCODER_ARCHITECTURES[config.model_type][config.use_mlm_head]
    else:
        architecture = ARCHITECTURES[config.model_type]
    hf = {"model_type": config.model_type, "architectures": [architecture]}
    for ours, theirs in KEYS[config.model_type]:
        hf[theirs] = getattr(config, ours)
    if isinstance(config, GPT2Config):
        hf["activation_function"] = {"gelu_tanh": "gelu_new"}.get(config.activation, config.activation)
        hf["embd_pdrop"] = hf["attn_pdrop"] = config.dropout
        hf["tie_word_embeddings"] = True
    elif isinstance(config, BertConfig):
        hf["hidden_act"] = config.activation
        hf["attention_probs_dropout_prob"] = config.dropout
        hf["add_pooling_layer"] = config.use_pooler
        hf["tie_word_embeddings"] = True
    elif isinstance(config, T5Config):
        hf.update(_t5_hf_fields(config))
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


def _encoder_fields(hf: dict) -> dict:
    # NOTE: which heads exist is not in the config proper but in `architectures`: BertModel has the
    # pooler, BertForMaskedLM the MLM head and no pooler, BertForPreTraining both.
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise LmforgeError("BERT as a decoder (is_decoder / add_cross_attention) is not supported")
    kind = hf.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise LmforgeError(f"unsupported position_embedding_type {kind!r}; only absolute is supported")
    architectures = hf.get("architectures") or []
    use_mlm_head = any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in architectures)
    default_pooler = not any(a.endswith(("ForMaskedLM", "ForQuestionAnswering")) for a in architectures)
    return {
        "activation": _activation(hf.get("hidden_act", "gelu")),
        "use_mlm_head": use_mlm_head,
        "use_pooler": bool(hf.get("add_pooling_layer", default_pooler)),
    }


def _t5_fields(hf: dict) -> dict:
    # feed_forward_proj is "relu" (v1.0) or "gated-gelu" (v1.1, Flan-T5), which means gelu_new.
    proj = hf.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise LmforgeError(f"unsupported T5 feed_forward_proj {proj!r}; expected 'relu' or 'gated-gelu'")
    # NOTE: v1.1 configs say tie_word_embeddings=false; transformers 5 rewrites that as
    # scale_decoder_outputs=false (and ties everything in memory). Either way: a separate head, no rescale.
    tied = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    return {
        "activation": _activation("gelu_new" if proj == "gated-gelu" else parts[-1]),
        "is_gated_mlp": len(parts) == 2,
        "tie_embeddings": bool(tied),
    }


def _t5_hf_fields(config: T5Config) -> dict:
    names = {"gelu_tanh": "gelu_new"}
    if config.is_gated_mlp:
        if config.activation == "gelu":
            raise LmforgeError("T5 configs cannot express a gated exact-GELU MLP; use gelu_tanh")
        names = {"gelu_tanh": "gelu"}  # "gated-gelu" means gelu_new
    activation = names.get(config.activation, config.activation)
    return {
        "feed_forward_proj": f"gated-{activation}" if config.is_gated_mlp else activation,
        "tie_word_embeddings": config.tie_embeddings,
        "is_encoder_decoder": True,
    }


def _rope_fields(hf: dict) -> dict:
    # transformers 5 writes `rope_parameters` (with rope_theta inside); older files write
    # `rope_theta` and `rope_scaling` at the top level.
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    return {"rope_theta": float(theta), "rope_scaling": None if kind == "default" else params}


def head_task(hf: dict) -> str | None:
    """The task head ("classification", "span_qa") that config.json's `architectures` names, if any."""
    tasks = {arch: task for (_, task), arch in HEAD_ARCHITECTURES.items()}
    return next((tasks[a] for a in hf.get("architectures") or [] if a in tasks), None)


def classifier_labels(hf: dict) -> dict:
    """num_labels, id2label and label2id from config.json (JSON keys are strings; ids are ints)."""
    id2label = hf.get("id2label")
    try:
        id2label = {int(i): name for i, name in id2label.items()} if id2label else None
    except (AttributeError, ValueError):
        raise LmforgeError("config.json id2label should map label ids (0, 1, ...) to names") from None
    num_labels = hf.get("num_labels")
    if id2label and num_labels is not None and num_labels != len(id2label):
        id2label = None  # transformers lets num_labels win, with fresh names
    label2id = hf.get("label2id") if id2label else None
    return {"num_labels": num_labels, "id2label": id2label, "label2id": label2id}


def head_hf_fields(model) -> dict:
    """The config.json entries of a task model: its architecture and, for a classifier, its labels."""
    hf = {"architectures": [HEAD_ARCHITECTURES[model.config.model_type, model.task]]}
    labels = getattr(model, "labels", None)
    if labels is not None:
        hf["num_labels"] = labels.num_labels
        hf["id2label"] = {str(i): name for i, name in labels.id2label.items()}
        hf["label2id"] = dict(labels.label2id)
    return hf


def config_fields(config) -> dict:
    """The config as a plain dict (for logs and recipes)."""
    return {"model_type": config.model_type, **dataclasses.asdict(config)}
