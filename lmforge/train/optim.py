"""AdamW (Loshchilov & Hutter, 2019) with decoupled weight decay on matrices only, and the
warmup-then-cosine learning-rate schedule most language models are trained with.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight matrices decay; norms, biases and embeddings do not (decaying them only
    pulls useful scale parameters and token vectors toward zero)."""
    no_decay = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, keep = [], []
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (keep if p.ndim < 2 or id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float, betas=(0.9, 0.95), eps: float = 1e-8):
    """AdamW, fused into one kernel per step where this PyTorch build supports it."""
    groups = param_groups(model, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


# Warmup takes at most this share of a run, so that a short run (--max-steps 10) still reaches its peak rate.
MAX_WARMUP_FRACTION = 0.1


def lr_at(step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to `lr`, then cosine decay to lr * min_lr_ratio at max_steps.

    The warmup lasts warmup_steps, capped at MAX_WARMUP_FRACTION of max_steps (at least one step).
    """
    warmup_steps = max(1, min(warmup_steps, int(max_steps * MAX_WARMUP_FRACTION)))
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return lr * min_lr_ratio
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
