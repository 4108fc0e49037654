"""LoRA: low-rank adaptation (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen linear layer `W x + b` learns only a low-rank update: `W x + b + (alpha / r) B A dropout(x)`,
with A (r, in) and B (out, r). B starts at zero, so training starts from the base model exactly; A
starts as PEFT does (Kaiming-uniform, a = sqrt(5)). rsLoRA (Kalajdzievski, 2023) scales by
alpha / sqrt(r) instead, which keeps the update's size stable at large ranks. After training the
update folds into W (`merge_lora`) and the model is a plain one again, as fast as before.

`apply_lora` swaps matching `nn.Linear` modules of any model for `LoRALinear`, by name suffix
(`q_proj`, `v_proj`, `mlp.up_proj`), and freezes everything but the adapters and the modules named
trainable (a task head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.errors import LmforgeError


@dataclass
class LoRAConfig:
    """What `apply_lora` did, kept on the model as `model.lora_config` (for saving the adapter)."""

    r: int
    alpha: float
    dropout: float
    use_rslora: bool
    targets: list[str] = field(default_factory=list)  # full names of the adapted modules
    trainable: list[str] = field(default_factory=list)  # full names of the modules trained whole


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update; its weight and bias keep the names (and the
    tensors) of the layer it wraps, so the base model's state dict names still apply."""

    def __init__(
        self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, *, use_rslora: bool = False
    ):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        kwargs = {"bias": False, "device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, r, **kwargs)  # weight (r, in)
        self.lora_B = nn.Linear(r, self.out_features, **kwargs)  # weight (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / math.sqrt(r) if use_rslora else alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The update (out, in) that merging adds to the weight: scaling * B @ A."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` with the update folded into its weight (the same Parameter objects)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        with torch.no_grad():
            self.weight += self.delta_weight().to(self.weight.dtype)
        linear.weight, linear.bias = self.weight, self.bias
        return linear


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _find(model: nn.Module, suffixes, what: str) -> dict[str, nn.Module]:
    """{full name: module} for every module whose name ends with one of `suffixes`; each must match one."""
    modules = dict(model.named_modules())
    found = {}
    for suffix in suffixes:
        hits = {name: m for name, m in modules.items() if name and _matches(name, suffix)}
        if not hits:
            linears = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, nn.Linear)})
            raise LmforgeError(
                f"no module of this {type(model).__name__} is named {suffix!r} ({what}); "
                f"its linear layers are: {', '.join(linears)}"
            )
        found.update(hits)
    return found


def apply_lora(
    model: nn.Module,
    targets=("q_proj", "v_proj"),
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    *,
    trainable=(),
    use_rslora: bool = False,
) -> int:
    """Replace the `nn.Linear` modules whose names end with one of `targets` by `LoRALinear`, freeze
    every other parameter except those of the modules named in `trainable`; return how many
    parameters train (shared ones counted once)."""
    if r < 1 or alpha <= 0 or not 0 <= dropout < 1:
        raise LmforgeError(
            f"LoRA needs r >= 1, alpha > 0 and 0 <= dropout < 1; got r={r}, alpha={alpha}, dropout={dropout}"
        )
    if getattr(model, "lora_config", None) is not None:
        raise LmforgeError("this model already has LoRA adapters; merge_lora(model) before applying new ones")
    found = _find(model, targets, "a LoRA target")
    shared = _shared_parameters(model)
    for name, module in found.items():
        if not isinstance(module, nn.Linear):
            raise LmforgeError(f"LoRA target {name} is a {type(module).__name__}, not a linear layer")
        if id(module.weight) in shared:
            raise LmforgeError(
                f"LoRA target {name} shares its weight with another module (tied); target another"
            )
    kept = _find(model, trainable, "trainable") if trainable else {}
    model.requires_grad_(False)
    for name, module in found.items():
        parent, _, child = name.rpartition(".")
        adapted = LoRALinear(module, r, alpha, dropout, use_rslora=use_rslora)
        setattr(model.get_submodule(parent), child, adapted)
        adapted.lora_A.requires_grad_(True)
        adapted.lora_B.requires_grad_(True)
    for module in kept.values():
        module.requires_grad_(True)
    model.lora_config = LoRAConfig(r, alpha, dropout, use_rslora, sorted(found), sorted(kept))
    return count_trainable(model)


def _shared_parameters(model: nn.Module) -> set[int]:
    seen, shared = set(), set()
    for _, p in model.named_parameters(remove_duplicate=False):
        (shared if id(p) in seen else seen).add(id(p))
    return shared


def count_trainable(model: nn.Module) -> int:
    """Parameters that require gradients, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain `nn.Linear` modules back; returns the model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.merged())
    model.lora_config = None
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that LoRA training changed: every adapter's A and B and the trainable modules' weights."""
    config = getattr(model, "lora_config", None)
    if config is None:
        raise LmforgeError("this model has no LoRA adapters; call apply_lora(model, ...) first")

    def is_adapter(key: str) -> bool:
        return (
            ".lora_A." in key or ".lora_B." in key or any(key.startswith(m + ".") for m in config.trainable)
        )

    return {k: v for k, v in model.state_dict().items() if is_adapter(k)}


def load_lora_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "the adapter"
) -> None:
    """Load adapter weights (as `lora_state_dict` gives them), checking every name and shape."""
    expected = lora_state_dict(model)
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise LmforgeError(
            f"{source} has {len(unexpected)} weights this model lacks (first: {unexpected[0]}); "
            "is it an adapter for another base model?"
        )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise LmforgeError(f"{source} lacks {len(missing)} weights (first: {missing[0]}); it is incomplete")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise LmforgeError(
                f"{source}: weight {key} has shape {tuple(state[key].shape)} but this model needs "
                f"{tuple(tensor.shape)}; the adapter was made for a base model of another shape"
            )
    model.load_state_dict(state, strict=False)
