"""What every lmforge model has, whatever its family: its device and dtype, a parameter count, and
`save_pretrained` (a Hugging Face checkpoint directory, written by lmforge.hf.save_model); and
`evaluating(model)`, the block in which any model runs for a score or a sample mid-training."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError

# generation_config.json's sampling settings: GenerationConfig fields of the same name and meaning.
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens")


class PretrainedModel(nn.Module):
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def sampling_defaults(self) -> dict:
        """The checkpoint's own sampling settings (its generation_config.json, kept as
        `generation_config` by the loader), as GenerationConfig fields: defaults for the flags.
        `do_sample: false` means greedy; values of the wrong type are left out, not trusted."""
        saved = getattr(self, "generation_config", None) or {}
        defaults = {
            k: saved[k]
            for k in SAMPLING_KEYS
            if isinstance(saved.get(k), int | float) and not isinstance(saved.get(k), bool)
        }
        if saved.get("do_sample") is False:
            defaults["temperature"] = 0.0
        return defaults

    def set_dropout(self, p: float) -> None:
        """Train with dropout probability `p` everywhere the family has dropout (residual, attention,
        embedding, head), recorded in the config so the saved config.json says it."""
        self.config.dropout = p
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            elif isinstance(getattr(module, "dropout", None), float):  # attention's SDPA dropout_p
                module.dropout = p

    def set_attention(self, kernel: str) -> None:
        """Run every attention layer on `kernel`: "sdpa" (PyTorch's fused kernel, the default) or
        "reference" (the formula written out, lmforge/nn/attention.py: slower, to read and step through)."""
        from lmforge.nn.attention import ATTENTION_KERNELS, Attention

        if kernel not in ATTENTION_KERNELS:
            raise LmforgeError(f"unknown attention {kernel!r}; pass one of {', '.join(ATTENTION_KERNELS)}")
        for module in self.modules():
            if isinstance(module, Attention):
                module.kernel = kernel

    def num_params(self, *, trainable_only: bool = False) -> int:
        """Parameters, counting tied ones once."""
        params = {id(p): p for p in self.parameters() if p.requires_grad or not trainable_only}
        return sum(p.numel() for p in params.values())

    def save_pretrained(
        self, out_dir: str | Path, *, max_shard_size: int | None = None, state_dict=None
    ) -> None:
        """Write config.json and safetensors weights that `transformers` opens directly (sharded above
        max_shard_size bytes; state_dict, when given, replaces the model's own, e.g. gathered FSDP weights).

        The same as `lmforge.hf.save_model(model, out_dir)`, which does the work.
        """
        # NOTE: the files are Hugging Face's format, which model code does not know: lmforge.hf writes
        # them, and depends on lmforge.models, never the reverse (tests/test_layering.py). This method
        # is only the familiar spelling, so it finds the writer by module name when it is called.
        rewritten = getattr(self, "quantization", None) or getattr(self, "is_fused", False)
        if rewritten and state_dict is None:
            raise LmforgeError(
                "this model was rewritten for inference (quantized, or its projections fused), so its layers are "
                "no longer a checkpoint's; save the model as loaded, before quantize_model or fuse_projections"
            )
        hf = importlib.import_module("lmforge.hf")
        hf.save_model(self, out_dir, max_shard_size=max_shard_size, state_dict=state_dict)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode (no dropout) and without gradients, then give it back the mode it had:
    a validation score or a sample in the middle of training leaves the model training."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
