"""Position-wise feed-forward networks.

`MLP` is the Transformer's `act(x W1 + b1) W2 + b2` (Vaswani et al., 2017; GPT-2 uses the tanh
approximation of GELU). `GatedMLP` is the gated linear unit variant `(act(x Wg) * x Wu) Wd`
(Shazeer, 2020: SwiGLU in Llama, gated-GELU in T5 v1.1).
"""

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.nn.fuse import stack_linears

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def get_activation(name: str):
    """The activation function called `name` (one of ACTIVATIONS)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; supported: {', '.join(ACTIVATIONS)}") from None


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu_tanh", bias: bool = True):
        super().__init__()
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.act = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class GatedMLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str = "silu", bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.act = get_activation(activation)
        self.gate_up_proj: nn.Module | None = None  # gate_proj and up_proj in one, once fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))

    def fuse_gate_up(self) -> bool:
        """For inference: replace gate_proj and up_proj by one `gate_up_proj` (one matrix product where
        there were two); False where they cannot be stacked (LoRA layers: lmforge/nn/fuse.py) or are
        fused already. The model then cannot be saved or trained (its checkpoint's layers are gone)."""
        fused = None if self.gate_up_proj is not None else stack_linears([self.gate_proj, self.up_proj])
        if fused is None:
            return False
        del self.gate_proj, self.up_proj
        self.gate_up_proj = fused
        return True
