"""Parameter names: lmforge <-> Hugging Face, as declarative tables.

Templates use `{i}` for the layer index. GPT-2 stores its linear layers as `Conv1D` (weight shape
(in, out), the transpose of `nn.Linear`) and fuses q, k and v into one `c_attn`; both quirks are
declared here, so model code never sees them.
"""

from __future__ import annotations

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

    def expand(self, n_layers: int) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
        """Concrete {lmforge: hf} names and fused {hf: (lmforge, ...)} for n_layers."""

        def each(template: str) -> list[str]:
            return [template.format(i=i) for i in range(n_layers)] if "{i}" in template else [template]

        names = {
            ours: theirs
            for t_ours, t_theirs in self.names.items()
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


KEY_MAPS = {"gpt2": _gpt2_map(), "llama": _llama_map()}


def from_hf_state(
    hf_state: dict[str, torch.Tensor], model_type: str, n_layers: int
) -> dict[str, torch.Tensor]:
    """Rename (and split, transpose) a Hugging Face state dict to lmforge names."""
    key_map = KEY_MAPS[model_type]
    names, fused = key_map.expand(n_layers)
    to_ours = {theirs: ours for ours, theirs in names.items()}
    state = {}
    for key, tensor in hf_state.items():
        if re.fullmatch(key_map.ignored, key):
            continue
        if key != "lm_head.weight" and not key.startswith(key_map.prefix):
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


def to_hf_state(state: dict[str, torch.Tensor], model_type: str, n_layers: int) -> dict[str, torch.Tensor]:
    """Rename (and fuse, transpose) an lmforge state dict to Hugging Face names."""
    key_map = KEY_MAPS[model_type]
    names, fused = key_map.expand(n_layers)
    hf_state = {}
    for theirs, parts in fused.items():
        if parts[0] in state:
            hf_state[theirs] = torch.cat([state[p] for p in parts], dim=0)
    fused_parts = {p for parts in fused.values() for p in parts}
    for ours, tensor in state.items():
        if ours not in fused_parts:
            hf_state[names[ours]] = tensor
    return {k: (t.t() if k.endswith(key_map.transposed) else t).contiguous() for k, t in hf_state.items()}
