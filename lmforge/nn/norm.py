"""Normalisation layers: LayerNorm (Ba et al., 2016) and RMSNorm (Zhang & Sennrich, 2019).

LayerNorm is `torch.nn.LayerNorm`. RMSNorm scales by the root mean square only, with no mean
subtraction and no bias; Llama and T5 both use it.
"""

import torch
import torch.nn.functional as F
from torch import nn

LayerNorm = nn.LayerNorm


class RMSNorm(nn.Module):
    """`x / sqrt(mean(x^2) + eps) * weight`, computed in float32 whatever the input dtype."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NOTE: the statistic is taken in float32 (as the reference checkpoints were trained) and
        # the result cast back before the weight, so bf16 inference matches their outputs.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return normed * self.weight
