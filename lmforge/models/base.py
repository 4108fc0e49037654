"""What every lmforge model has, whatever its family: its device and dtype, a parameter count, and
`save_pretrained` (a Hugging Face checkpoint directory)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class PretrainedModel(nn.Module):
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_params(self, *, trainable_only: bool = False) -> int:
        """Parameters, counting tied ones once."""
        params = {id(p): p for p in self.parameters() if p.requires_grad or not trainable_only}
        return sum(p.numel() for p in params.values())

    def save_pretrained(
        self, out_dir: str | Path, *, max_shard_size: int | None = None, state_dict=None
    ) -> None:
        """Write config.json and safetensors weights that `transformers` opens directly (sharded above
        max_shard_size bytes; state_dict, when given, replaces the model's own, e.g. gathered FSDP weights)."""
        from lmforge.hf.checkpoint import save_model

        save_model(self, out_dir, max_shard_size=max_shard_size, state_dict=state_dict)
