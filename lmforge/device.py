"""Device and precision choice, seeding, and printing from one process of many.

bf16 autocast is used where the hardware computes it natively: CUDA GPUs from Ampere on, and CPUs
with AVX512-BF16 or AMX; elsewhere bf16 would be emulated and slower than float32.
"""

from __future__ import annotations

import functools
import os
import random

import numpy as np
import torch


def default_device() -> torch.device:
    """CUDA when present, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 matmuls natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def supports_bf16(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str = "cpu") -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' | 'auto' (bf16 where native, else float32) -> a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "float32", "fp32"):
        return torch.float32
    if name == "auto":
        return torch.bfloat16 if supports_bf16(device) else torch.float32
    table = {
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in table:
        from lmforge.errors import LmforgeError

        raise LmforgeError(f"unknown dtype {name!r}; use float32, bfloat16, float16 or auto")
    return table[name]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def is_rank0() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """print, from rank 0 only."""
    if is_rank0():
        print(*args, **kwargs)
