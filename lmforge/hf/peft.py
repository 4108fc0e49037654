"""LoRA adapters as Hugging Face PEFT directories: `adapter_config.json` + `adapter_model.safetensors`.

PEFT names each adapter weight after the module it adapts inside the Hugging Face model, under the
wrapper's prefix: `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`. lmforge module
names are translated through the checkpoint key maps (keys.py), so an adapter trained here loads
with `peft.PeftModel.from_pretrained` and one trained with `peft` loads here.

NOTE: GPT-2 fuses q, k and v into one `c_attn` layer. A PEFT adapter on it is one A (r, d_model)
and one B (3 d_model, r): here, q_proj, k_proj and v_proj adapters that share that A and split B.
Separate q/k/v adapters made by `apply_lora` have no such PEFT form and are refused on saving.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmforge.errors import LmforgeError
from lmforge.hf.checkpoint import (
    BASE,
    load_model,
    nonfinite_tensors,
    read_json,
    read_pickle,
    read_safetensors,
    report_nonfinite,
    resolve_checkpoint_dir,
    save_model,
)
from lmforge.hf.keys import KEY_MAPS
from lmforge.nn.lora import apply_lora, load_lora_state_dict, lora_state_dict, merge_lora

ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_PICKLE = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
PEFT_PREFIX = "base_model.model."
TASK_TYPES = {"gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM", "t5": "SEQ_2_SEQ_LM"}  # others: a plain PeftModel
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
# PEFT features with no counterpart in LoRALinear, and the values that mean "not used".
UNSUPPORTED = {
    "use_dora": False,
    "lora_bias": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "target_parameters": None,
    "trainable_token_indices": None,
    "layer_replication": None,
}


class _Names:
    """lmforge <-> Hugging Face names of one model's parameters and modules, as its checkpoint has them."""

    def __init__(self, model):
        config = model.config
        self.key_map = KEY_MAPS[config.model_type]
        own = set(model.state_dict())
        is_gated = any(".gate_proj." in k for k in own)
        n_decoder_layers = getattr(config, "n_decoder_layers", None)
        names, fused = self.key_map.expand(config.n_layers, n_decoder_layers, is_gated=is_gated)
        # A task model (lmforge/models/heads.py) keeps its base model's modules under `base.`.
        self.params = {
            (ours if ours in own else BASE + ours): theirs
            for ours, theirs in names.items()
            if ours in own or BASE + ours in own
        }
        self.is_bare = self.key_map.is_bare_without_head and not any(
            v.startswith(self.key_map.heads) for v in self.params.values()
        )
        if self.is_bare:  # BertModel checkpoints drop "bert."
            self.params = {k: v.removeprefix(self.key_map.prefix) for k, v in self.params.items()}
        self.to_ours = {theirs: ours for ours, theirs in self.params.items()}
        self.modules = {_parent(k): _parent(v) for k, v in self.params.items() if k.endswith(".weight")}
        # {HF module: (lmforge modules)} for fused layers (GPT-2's c_attn)
        self.fused = {
            _parent(k): tuple(_parent(p) for p in v) for k, v in fused.items() if k.endswith(".weight")
        }
        self.modules_to_ours = {theirs: ours for ours, theirs in self.modules.items()}

    def normalise(self, hf_name: str) -> str:
        """A PEFT key's name inside the model it wrapped, as our checkpoint would write it: the wrapper may
        have held the bare model (GPT2Model, LlamaModel) or a task model (BertForSequenceClassification)."""
        prefix, heads = self.key_map.prefix, self.key_map.heads
        if self.is_bare:
            return hf_name.removeprefix(prefix)
        return hf_name if hf_name.startswith((prefix, *heads)) else prefix + hf_name

    def every_hf_module(self) -> set[str]:
        return set(self.modules.values()) | set(self.fused)


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _short_names(chosen: set[str], every: set[str]) -> list[str]:
    """The shortest name suffixes that select exactly `chosen` among `every` (PEFT's target_modules)."""
    short = set()
    for path in chosen:
        parts = path.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if all(p in chosen for p in every if _matches(p, suffix)):
                short.add(suffix)
                break
    return sorted(short)


def save_adapter(model, out_dir: str | Path, *, base_model_name_or_path: str | None = None) -> None:
    """Write the model's LoRA adapters (and trainable modules) as a PEFT adapter directory."""
    config = getattr(model, "lora_config", None)
    if config is None:
        raise LmforgeError("this model has no LoRA adapters to save; call apply_lora(model, ...) first")
    names = _Names(model)
    tensors, targets = {}, set()
    for hf_module, parts in names.fused.items():
        if any(p in config.targets for p in parts):
            tensors.update(_fused_adapter(model, hf_module, parts, config.targets))
            targets.add(hf_module)
    fused_parts = {p for parts in names.fused.values() for p in parts}
    for name in config.targets:
        if name not in fused_parts:
            hf_module = names.modules.get(name, name)  # a module outside the key map keeps its name
            layer = model.get_submodule(name)
            tensors[f"{PEFT_PREFIX}{hf_module}.lora_A.weight"] = layer.lora_A.weight
            tensors[f"{PEFT_PREFIX}{hf_module}.lora_B.weight"] = layer.lora_B.weight
            targets.add(hf_module)
    kept = {k: v for k, v in lora_state_dict(model).items() if ".lora_A." not in k and ".lora_B." not in k}
    saved_modules = set()
    for key, tensor in kept.items():
        if key in {f"{p}.{w}" for p in fused_parts for w in ("weight", "bias")}:
            raise LmforgeError(
                f"{key} is part of a fused Hugging Face layer and cannot be saved as trainable"
            )
        hf_key = names.params.get(key, key)
        tensors[PEFT_PREFIX + hf_key] = tensor.t() if hf_key.endswith(names.key_map.transposed) else tensor
        saved_modules.add(_parent(hf_key))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = base_model_name_or_path or getattr(model, "name_or_path", None)
    adapter_config = _adapter_config(model, base, _short_names(targets, names.every_hf_module() | targets))
    adapter_config["modules_to_save"] = sorted(saved_modules) or None
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(tensors, out_dir / ADAPTER_WEIGHTS, metadata={"format": "pt"})


def _adapter_config(model, base_model_name_or_path: str | None, target_modules) -> dict:
    """adapter_config.json as PEFT writes it for the model's LoRA settings (modules_to_save: the caller's)."""
    config = model.lora_config
    alpha = int(config.alpha) if float(config.alpha).is_integer() else config.alpha
    return {
        "peft_type": "LORA",
        "task_type": TASK_TYPES.get(model.config.model_type),
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.r,
        "lora_alpha": alpha,
        "lora_dropout": config.dropout,
        "use_rslora": config.use_rslora,
        "target_modules": target_modules,
        "modules_to_save": None,
        "bias": "none",
        "fan_in_fan_out": model.config.model_type == "gpt2",  # GPT-2's Conv1D stores weights as (in, out)
        "init_lora_weights": True,
        "inference_mode": True,
        **UNSUPPORTED,
    }


def _fused_adapter(model, hf_module: str, parts: tuple[str, ...], targets: list[str]) -> dict:
    layers = [model.get_submodule(p) if p in targets else None for p in parts]
    if any(layer is None or layer.lora_A is not layers[0].lora_A for layer in layers):
        raise LmforgeError(
            f"Hugging Face GPT-2 fuses {', '.join(p.rsplit('.', 1)[-1] for p in parts)} into one layer "
            f"({hf_module}), and a PEFT adapter there is one adapter on all of them; separate q/k/v "
            "adapters cannot be saved in that format. Target o_proj, up_proj or down_proj, use a "
            "Llama or BERT model, or merge_lora and save the whole model"
        )
    return {
        f"{PEFT_PREFIX}{hf_module}.lora_A.weight": layers[0].lora_A.weight,
        f"{PEFT_PREFIX}{hf_module}.lora_B.weight": torch.cat([layer.lora_B.weight for layer in layers]),
    }


def read_adapter_config(adapter_dir: Path) -> dict:
    """adapter_config.json, checked to describe a LoRA adapter that LoRALinear can represent."""
    if not adapter_dir.is_dir():
        raise LmforgeError(
            f"no adapter directory at {adapter_dir}; pass the directory holding {ADAPTER_CONFIG}"
        )
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise LmforgeError(
            f"{adapter_dir} has no {ADAPTER_CONFIG}; pass a directory written by save_adapter or peft's save_pretrained"
        )
    config = read_json(adapter_dir / ADAPTER_CONFIG)
    if config.get("peft_type") != "LORA":
        raise LmforgeError(
            f"{adapter_dir} holds a {config.get('peft_type')!r} adapter; only LORA adapters load"
        )
    for key, default in UNSUPPORTED.items():
        if config.get(key, default) not in (default, None):
            raise LmforgeError(
                f"{adapter_dir} uses the PEFT option {key}={config[key]!r}, which lmforge does not support"
            )
    if config.get("bias", "none") != "none":
        raise LmforgeError(
            f"{adapter_dir} trains biases (bias={config['bias']!r}); only bias='none' is supported"
        )
    if not isinstance(config.get("r"), int) or not isinstance(config.get("lora_alpha"), int | float):
        raise LmforgeError(f"{adapter_dir / ADAPTER_CONFIG} lacks an integer r or a number lora_alpha")
    return config


def _read_adapter_weights(adapter_dir: Path, allow_nonfinite: bool) -> dict[str, torch.Tensor]:
    if (adapter_dir / ADAPTER_WEIGHTS).exists():
        path, tensors = adapter_dir / ADAPTER_WEIGHTS, read_safetensors(adapter_dir / ADAPTER_WEIGHTS)
    elif (adapter_dir / ADAPTER_PICKLE).exists():
        path, tensors = adapter_dir / ADAPTER_PICKLE, read_pickle(adapter_dir / ADAPTER_PICKLE)
    else:
        raise LmforgeError(f"{adapter_dir} has no adapter weights ({ADAPTER_WEIGHTS} or {ADAPTER_PICKLE})")
    report_nonfinite([(path, *found) for found in nonfinite_tensors(tensors)], allow_nonfinite)
    return tensors


def load_adapter(model, adapter_dir: str | Path, *, allow_nonfinite: bool = False):
    """Apply a PEFT LoRA adapter directory (from save_adapter or peft) to an lmforge model; returns the model.
    A model that has adapters already (apply_lora) gets their weights from the directory. Weights holding
    NaN or Inf are refused by name, unless allow_nonfinite (then: a warning)."""
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    names = _Names(model)
    targets, fused, state, kept = set(), [], {}, set()
    for raw, tensor in _read_adapter_weights(adapter_dir, allow_nonfinite).items():
        raw = raw.removeprefix(PEFT_PREFIX)
        key = names.normalise(raw)
        hf_module, _, kind = key.removesuffix(".weight").rpartition(".")
        if kind in ("lora_A", "lora_B") and hf_module in names.fused:
            parts = names.fused[hf_module]
            chunks = [tensor] * len(parts) if kind == "lora_A" else tensor.chunk(len(parts), dim=0)
            state.update({f"{p}.{kind}.weight": c for p, c in zip(parts, chunks)})
            targets.update(parts)
            fused.append(parts)
        elif kind in ("lora_A", "lora_B"):
            if hf_module not in names.modules_to_ours:
                raise LmforgeError(
                    f"{adapter_dir} adapts {hf_module}, which this {model.config.model_type} model does not "
                    "have; is it an adapter for another base model?"
                )
            ours = names.modules_to_ours[hf_module]
            state[f"{ours}.{kind}.weight"] = tensor
            targets.add(ours)
        else:  # a module trained whole (PEFT's modules_to_save); one unknown to the key map keeps its name
            ours = names.to_ours.get(key, raw)
            state[ours] = tensor.t() if key.endswith(names.key_map.transposed) else tensor
            kept.add(_parent(ours))
    if not targets:
        raise LmforgeError(f"{adapter_dir} holds no LoRA weights (lora_A / lora_B)")
    if getattr(model, "lora_config", None) is not None:  # adapters in place already (resuming training)
        load_lora_state_dict(model, state, source=str(adapter_dir))
        return model
    r, alpha, dropout = config["r"], config["lora_alpha"], config.get("lora_dropout", 0.0)
    apply_lora(
        model,
        sorted(targets),
        r,
        alpha,
        dropout,
        trainable=sorted(kept),
        use_rslora=config.get("use_rslora", False),
    )
    _share_lora_a(model, fused)
    load_lora_state_dict(model, state, source=str(adapter_dir))
    return model


def _share_lora_a(model, fused) -> None:
    """One A for each fused layer's parts, as PEFT has a single adapter on the fused layer."""
    for parts in fused:
        shared = model.get_submodule(parts[0]).lora_A
        for p in parts[1:]:
            model.get_submodule(p).lora_A = shared


def apply_lora_for_peft(
    model, targets: list[str], r: int, alpha: float, dropout: float, *, trainable=()
) -> list[str]:
    """`apply_lora`, so that `save_adapter` can write the result: a target that is part of a fused Hugging
    Face layer (GPT-2's q_proj, k_proj, v_proj in c_attn) adapts the whole layer, with one shared A.
    Returns the targets used."""
    names = _Names(model)
    fused_parts = {part.rsplit(".", 1)[-1] for parts in names.fused.values() for part in parts}
    is_fused = any(t in fused_parts for t in targets)
    if is_fused:
        targets = list(dict.fromkeys([*targets, *sorted(fused_parts)]))
    apply_lora(model, targets, r, alpha, dropout, trainable=trainable)
    if is_fused:
        _share_lora_a(model, list(names.fused.values()))
    return targets


def merge_adapter(
    base: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype=torch.float32,
    allow_nonfinite: bool = False,
) -> Path:
    """Load a base checkpoint, apply a PEFT LoRA adapter, fold it into the weights and save a plain
    Hugging Face checkpoint (with the base's tokenizer files) at out_dir; returns out_dir."""
    base_dir, out_dir = resolve_checkpoint_dir(base), Path(out_dir)
    if out_dir.resolve() == base_dir.resolve() or out_dir.resolve() == Path(adapter_dir).resolve():
        raise LmforgeError(
            f"--out {out_dir} would overwrite the base model or the adapter; pass a new directory"
        )
    read_adapter_config(Path(adapter_dir))  # a bad adapter fails before the base model is read
    model = load_model(base_dir, dtype=dtype, allow_nonfinite=allow_nonfinite)
    merge_lora(load_adapter(model, adapter_dir, allow_nonfinite=allow_nonfinite))
    save_model(model, out_dir)
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out_dir / name)
    return out_dir
