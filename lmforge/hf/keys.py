"""Parameter names: lmforge <-> Hugging Face, as declarative tables.

Templates use `{i}` for the layer index. GPT-2 stores its linear layers as `Conv1D` (weight shape
(in, out), the transpose of `nn.Linear`) and fuses q, k and v into one `c_attn`; both quirks are
declared here, so model code never sees them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

import torch

from lmforge.errors import LmforgeError


@dataclass
class KeyMap:
    names: dict[str, str]  # lmforge template -> Hugging Face template
    prefix: str  # the base-model prefix that `*ForCausalLM` checkpoints add ("transformer.", "model.")
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)  # HF template -> parts along dim 0
    transposed: tuple[str, ...] = ()  # HF name suffixes stored as (in, out)
    ignored: str = r"$^"  # HF keys that are buffers, not weights
    heads: tuple[str, ...] = ("lm_head.",)  # HF keys of task heads, which sit outside `prefix`
    # Save without `prefix` when no head is saved: BertModel checkpoints are bare, GPT2Model ones are not.
    is_bare_without_head: bool = False

    # Entries that replace those of `names` when the MLP is gated (T5 v1.1: wi_0 and wi_1 for wi).
    gated_names: dict[str, str] = field(default_factory=dict)

    def expand(
        self, n_layers: int, n_decoder_layers: int | None = None, *, is_gated: bool = False
    ) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
        """Concrete {lmforge: hf} names and fused {hf: (lmforge, ...)} for n_layers (and, in
        encoder-decoders, n_decoder_layers: templates use `{j}` for a decoder layer)."""

        def each(template: str) -> list[str]:
            if "{j}" in template:
                return [template.format(j=j) for j in range(n_decoder_layers or 0)]
            return [template.format(i=i) for i in range(n_layers)] if "{i}" in template else [template]

        templates = {**self.names, **self.gated_names} if is_gated else self.names
        names = {
            ours: theirs
            for t_ours, t_theirs in templates.items()
            for ours, theirs in zip(each(t_ours), each(t_theirs))
        }
        fused = {}
        for t_theirs, t_parts in self.fused.items():
            for i, theirs in enumerate(each(t_theirs)):
                fused[theirs] = tuple(p.format(i=i) for p in t_parts)
        return names, fused


def _gpt2_map() -> KeyMap:
    names = {
        "embed.weight": "transformer.wte.weight",
        "pos_embed.weight": "transformer.wpe.weight",
        "norm.weight": "transformer.ln_f.weight",
        "norm.bias": "transformer.ln_f.bias",
        "lm_head.weight": "lm_head.weight",
    }
    layer = {
        "attn_norm": "ln_1",
        "attn.o_proj": "attn.c_proj",
        "mlp_norm": "ln_2",
        "mlp.up_proj": "mlp.c_fc",
        "mlp.down_proj": "mlp.c_proj",
    }
    fused = {}
    for p in ("weight", "bias"):
        for ours, theirs in layer.items():
            names[f"blocks.{{i}}.{ours}.{p}"] = f"transformer.h.{{i}}.{theirs}.{p}"
        fused[f"transformer.h.{{i}}.attn.c_attn.{p}"] = tuple(
            f"blocks.{{i}}.attn.{x}_proj.{p}" for x in "qkv"
        )
    return KeyMap(
        names,
        "transformer.",
        fused,
        transposed=("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"),
        ignored=r".*\.attn\.(bias|masked_bias)$",
    )


def _llama_map() -> KeyMap:
    names = {
        "embed.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    layer = {
        "attn_norm": "input_layernorm",
        "mlp_norm": "post_attention_layernorm",
        **{f"attn.{x}_proj": f"self_attn.{x}_proj" for x in "qkvo"},
        **{f"mlp.{x}_proj": f"mlp.{x}_proj" for x in ("gate", "up", "down")},
    }
    for ours, theirs in layer.items():
        for p in ("weight", "bias"):
            names[f"blocks.{{i}}.{ours}.{p}"] = f"model.layers.{{i}}.{theirs}.{p}"
    return KeyMap(names, "model.", ignored=r".*rotary_emb\.inv_freq$")


def _bert_map(prefix: str, head: str, dense: str, norm: str) -> KeyMap:
    """BERT and RoBERTa: the same encoder, under "bert." or "roberta.", with differently named MLM heads."""
    names = {
        "embed.weight": f"{prefix}embeddings.word_embeddings.weight",
        "pos_embed.weight": f"{prefix}embeddings.position_embeddings.weight",
        "type_embed.weight": f"{prefix}embeddings.token_type_embeddings.weight",
        "pooler.weight": f"{prefix}pooler.dense.weight",
        "pooler.bias": f"{prefix}pooler.dense.bias",
        "lm_head.bias": f"{head}bias",
    }
    layer = {
        **{f"attn.{x}_proj": f"attention.self.{n}" for x, n in zip("qkv", ("query", "key", "value"))},
        "attn.o_proj": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "mlp.up_proj": "intermediate.dense",
        "mlp.down_proj": "output.dense",
        "mlp_norm": "output.LayerNorm",
    }
    for p in ("weight", "bias"):
        names[f"embed_norm.{p}"] = f"{prefix}embeddings.LayerNorm.{p}"
        names[f"lm_head.dense.{p}"] = f"{head}{dense}.{p}"
        names[f"lm_head.norm.{p}"] = f"{head}{norm}.{p}"
        for ours, theirs in layer.items():
            names[f"blocks.{{i}}.{ours}.{p}"] = f"{prefix}encoder.layer.{{i}}.{theirs}.{p}"
    # The decoder weight and bias are the token embedding and `bias` again (tied); position_ids and
    # token_type_ids are buffers; cls.seq_relationship is the next-sentence head, not modelled.
    ignored = (
        r".*embeddings\.(position_ids|token_type_ids)$|.*decoder\.(weight|bias)$|cls\.seq_relationship\..*"
    )
    return KeyMap(
        names, prefix, ignored=ignored, heads=(head.split(".")[0] + ".",), is_bare_without_head=True
    )


def _t5_map() -> KeyMap:
    """T5: `shared` embedding, encoder blocks of (self-attention, feed-forward) and decoder blocks of
    (self-attention, cross-attention, feed-forward) layers; the relative position bias lives in block 0."""
    names = {"embed.weight": "shared.weight", "lm_head.weight": "lm_head.weight"}
    gated_names = {}
    for stack, index in (("encoder", "i"), ("decoder", "j")):
        bias = "layer.0.SelfAttention.relative_attention_bias.weight"
        names[f"{stack}.pos_embed.weight"] = f"{stack}.block.0.{bias}"
        names[f"{stack}.norm.weight"] = f"{stack}.final_layer_norm.weight"
        attentions = [("attn", "layer.0.SelfAttention", "layer.0")]
        if stack == "decoder":
            attentions.append(("cross_attn", "layer.1.EncDecAttention", "layer.1"))
        mlp = f"layer.{len(attentions)}"
        layer = {"mlp_norm": f"{mlp}.layer_norm", "mlp.up_proj": f"{mlp}.DenseReluDense.wi"}
        layer["mlp.down_proj"] = f"{mlp}.DenseReluDense.wo"
        for ours, theirs, sublayer in attentions:
            layer[f"{ours}_norm"] = f"{sublayer}.layer_norm"
            layer.update({f"{ours}.{x}_proj": f"{theirs}.{x}" for x in "qkvo"})
        block = f"{stack}.blocks.{{{index}}}", f"{stack}.block.{{{index}}}"
        for ours, theirs in layer.items():
            names[f"{block[0]}.{ours}.weight"] = f"{block[1]}.{theirs}.weight"
        for ours, theirs in (("gate_proj", "wi_0"), ("up_proj", "wi_1")):
            gated_names[f"{block[0]}.mlp.{ours}.weight"] = f"{block[1]}.{mlp}.DenseReluDense.{theirs}.weight"
    # The stacks' embed_tokens are copies of `shared`; the decoder's cross-attention never had a bias.
    ignored = r"(encoder|decoder)\.embed_tokens\.weight|decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight"
    return KeyMap(names, "", ignored=ignored, gated_names=gated_names)


def _with_task_heads(key_map: KeyMap, heads: dict[str, str]) -> KeyMap:
    """The map plus task-head weights (lmforge/models/heads.py), {lmforge: Hugging Face}: in their
    checkpoints a head sits beside the base model, outside its prefix."""
    hf_heads = tuple(dict.fromkeys(theirs.split(".")[0] + "." for theirs in heads.values()))
    return dataclasses.replace(key_map, names={**key_map.names, **heads}, heads=key_map.heads + hf_heads)


# `*ForSequenceClassification`: a decoder's `score` (no bias), BERT's `classifier`; BERT's
# `*ForQuestionAnswering`: `qa_outputs`, start and end logits.
DECODER_HEADS = {"label_head.weight": "score.weight"}
BERT_HEADS = {
    f"{ours}.{p}": f"{theirs}.{p}"
    for ours, theirs in (("label_head", "classifier"), ("span_head", "qa_outputs"))
    for p in ("weight", "bias")
}

KEY_MAPS = {
    "gpt2": _with_task_heads(_gpt2_map(), DECODER_HEADS),
    "llama": _with_task_heads(_llama_map(), DECODER_HEADS),
    "bert": _with_task_heads(
        _bert_map("bert.", "cls.predictions.", "transform.dense", "transform.LayerNorm"), BERT_HEADS
    ),
    "roberta": _bert_map("roberta.", "lm_head.", "dense", "layer_norm"),
    "t5": _t5_map(),
}


def from_hf_state(
    hf_state: dict[str, torch.Tensor], model_type: str, n_layers: int, n_decoder_layers: int | None = None
) -> dict[str, torch.Tensor]:
    """Rename (and split, transpose) a Hugging Face state dict to lmforge names."""
    key_map = KEY_MAPS[model_type]
    gated = key_map.expand(n_layers, n_decoder_layers, is_gated=True)[0]
    plain = key_map.expand(n_layers, n_decoder_layers)[0]
    is_gated = any(gated[k] in hf_state for k in gated.keys() - plain.keys())
    names, fused = key_map.expand(n_layers, n_decoder_layers, is_gated=is_gated)
    to_ours = {theirs: ours for ours, theirs in names.items()}
    state = {}
    for key, tensor in hf_state.items():
        if re.fullmatch(key_map.ignored, key):
            continue
        if not key.startswith((key_map.prefix, *key_map.heads)):
            key = key_map.prefix + key  # a bare base model (GPT2Model, LlamaModel) has no prefix
        if key.endswith(key_map.transposed):
            tensor = tensor.t()
        if key in fused:
            parts = fused[key]
            state.update(zip(parts, tensor.chunk(len(parts), dim=0)))
        elif key in to_ours:
            state[to_ours[key]] = tensor
        else:
            raise LmforgeError(
                f"unexpected weight {key!r} in the checkpoint for a {model_type} model; "
                "is config.json the one that goes with these weights?"
            )
    return state


def to_hf_state(
    state: dict[str, torch.Tensor], model_type: str, n_layers: int, n_decoder_layers: int | None = None
) -> dict[str, torch.Tensor]:
    """Rename (and fuse, transpose) an lmforge state dict to Hugging Face names."""
    key_map = KEY_MAPS[model_type]
    is_gated = any(".gate_proj." in k for k in state)
    names, fused = key_map.expand(n_layers, n_decoder_layers, is_gated=is_gated)
    hf_state = {}
    for theirs, parts in fused.items():
        if parts[0] in state:
            hf_state[theirs] = torch.cat([state[p] for p in parts], dim=0)
    fused_parts = {p for parts in fused.values() for p in parts}
    for ours, tensor in state.items():
        if ours not in fused_parts:
            hf_state[names[ours]] = tensor
    if key_map.is_bare_without_head and not any(k.startswith(key_map.heads) for k in hf_state):
        hf_state = {k.removeprefix(key_map.prefix): t for k, t in hf_state.items()}
    return {k: (t.t() if k.endswith(key_map.transposed) else t).contiguous() for k, t in hf_state.items()}
