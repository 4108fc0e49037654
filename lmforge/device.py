"""Device and precision choice, seeding, and printing from one process of many.

Precision `auto` means the fastest dtype this device computes correctly. On CUDA that is bf16 where
the GPU has it. On a CPU the flags do not tell: some CPUs with AVX512-BF16 run torch's bf16 matmuls
at twice the float32 speed, others at half of it, and without the flag bf16 is emulated (about a
hundred times slower). So a CPU with the flag is measured: a short float32-against-bf16 matmul at
the model's own sizes, cached per machine and torch version in the user's cache directory.

`LMFORGE_PRECISION` (float32, bfloat16, float16), when set, replaces `auto` in every command: CI runs
the tests a second time with it set to bfloat16, so the bf16 path is exercised on every machine.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import LmforgeError

PRECISION_ENV = "LMFORGE_PRECISION"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# bf16 is chosen on a CPU only when its measured matmul speed beats float32 by this much: a near tie
# is not worth bf16's rounding.
MIN_BF16_SPEEDUP = 1.15


def default_device() -> torch.device:
    """CUDA when present, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_device(name: str | torch.device | None) -> torch.device:
    """The device asked for (None: default_device()), refused in one line unless this machine has it:
    a check that costs nothing, for commands to make before they load a model or read data."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise LmforgeError(
            f"unsupported device {str(name)!r}; lmforge runs on cpu, cuda, cuda:N (the Nth GPU) or mps"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            )
            raise LmforgeError(f"device {str(name)!r} is not available: {why}; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            which = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise LmforgeError(
                f"device {str(name)!r} does not exist: this machine has {count} CUDA GPU"
                f"{'s' if count > 1 else ''} ({which}); pick one of them"
            )
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if not (mps and mps.is_available()) or device.index not in (None, 0):
            raise LmforgeError(
                f"device {str(name)!r} is not available: Apple's MPS needs a Mac with Apple silicon (or an "
                "AMD GPU) and a torch built for it; use --device cpu"
            )
    return device


@functools.cache
def cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags, from the first processor in /proc/cpuinfo (empty elsewhere)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info.get("model name") or platform.processor() or "unknown CPU", frozenset(
        info.get("flags", "").split()
    )


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX); whether they are fast is measured."""
    flags = cpu_model_and_flags()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags


def supports_bf16(device: torch.device | str) -> bool:
    """Whether the device has bf16 in hardware (not whether it is faster there: see choose_precision)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


@dataclass(frozen=True)
class Precision:
    """A compute dtype and why it was chosen."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def requested_precision(name: str | None) -> str:
    """The precision asked for: `name`, where `auto` (or None) gives way to $LMFORGE_PRECISION if set."""
    name = "auto" if name is None else str(name)
    if name == "auto" and os.environ.get(PRECISION_ENV):
        name = os.environ[PRECISION_ENV].strip()
        if name not in DTYPES and name != "auto":
            raise LmforgeError(
                f"{PRECISION_ENV}={name!r} is not a precision; set it to float32, bfloat16 or float16, or unset it"
            )
    return name


def check_precision(name: str | None, device: torch.device | str, *, training: bool = True) -> str:
    """The precision asked for (`auto` or a DTYPES name), refusing what this device cannot run: a
    check that costs nothing, for commands to make before their data work."""
    device = torch.device(device)
    asked = requested_precision(name)
    if asked != "auto" and asked not in DTYPES:
        raise LmforgeError(f"unknown precision {asked!r}; use auto, float32, bfloat16 or float16")
    if asked != "auto" and DTYPES[asked] == torch.float16 and training and device.type != "cuda":
        raise LmforgeError(
            f"float16 training needs a CUDA GPU, where lmforge scales its loss; on {device.type} "
            "use --precision bfloat16 or float32"
        )
    return asked


def choose_precision(
    name: str | None,
    device: torch.device | str,
    *,
    sizes: tuple[int, int] = (768, 3072),
    training: bool = True,
) -> Precision:
    """The compute dtype for `name` (auto, float32, bfloat16, float16) on `device`, and why.

    sizes are the model's (d_model, d_ff): the matmuls a CPU probe times. float16 trains only on CUDA
    (with loss scaling); a CPU has neither the kernels nor the need.
    """
    device = torch.device(device)
    asked = check_precision(name, device, training=training)
    if asked != "auto":
        dtype = DTYPES[asked]
        forced = name in (None, "auto")
        return Precision(dtype, f"set by {PRECISION_ENV}" if forced else "asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "this GPU computes bf16")
        return Precision(torch.float32, "this GPU has no bf16")
    if device.type != "cpu":
        return Precision(torch.float32, f"the default on {device.type}")
    if not cpu_has_native_bf16():
        return Precision(torch.float32, "no bf16 instructions on this CPU")
    speedup = bf16_speedup(*sizes)
    if speedup is None:
        return Precision(torch.float32, "bf16 matmuls are inaccurate on this CPU")
    dtype = torch.bfloat16 if speedup >= MIN_BF16_SPEEDUP else torch.float32
    return Precision(dtype, f"bf16 measured {speedup:.2f}x float32 on this CPU")


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str = "cpu") -> torch.dtype:
    """A weight dtype: float32 | bfloat16 | float16 | auto (as choose_precision, for inference) -> torch dtype.

    None means the default: float32, or $LMFORGE_PRECISION where it is set.
    """
    if isinstance(name, torch.dtype):
        return name
    if name is None:
        name = requested_precision("auto")
        if name == "auto" and not os.environ.get(PRECISION_ENV):
            return torch.float32
    if name == "auto":
        return choose_precision("auto", device, training=False).dtype
    if name not in DTYPES:
        raise LmforgeError(f"unknown dtype {name!r}; use float32, bfloat16, float16 or auto")
    return DTYPES[name]


def cache_dir() -> Path:
    """lmforge's per-user cache directory ($LMFORGE_CACHE, else $XDG_CACHE_HOME/lmforge or ~/.cache/lmforge)."""
    if os.environ.get("LMFORGE_CACHE"):
        return Path(os.environ["LMFORGE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmforge"


def bf16_speedup(d_model: int, d_ff: int) -> float | None:
    """float32 time / bf16 time of this CPU's (rows, d_model) @ (d_model, d_ff) matmul, from the cache or
    measured now (well under a second); None where bf16 gives wrong results."""
    key = f"{cpu_model_and_flags()[0]} | torch {torch.__version__} | {torch.get_num_threads()} threads | {d_model}x{d_ff}"
    path = cache_dir() / "precision.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if key in cached and (cached[key] is None or isinstance(cached[key], float)):
        return cached[key]
    cached[key] = measure_bf16_speedup(d_model, d_ff)
    try:  # a cache that cannot be written only means measuring again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
    return cached[key]


def measure_bf16_speedup(
    d_model: int, d_ff: int, *, budget_flops: float = 2e9, budget_s: float = 0.25
) -> float | None:
    """Time float32 and bf16 (rows, d_model) @ (d_model, d_ff) matmuls, alternately (so a neighbour's
    load slows both alike), the fastest of each over at least 3 rounds and up to budget_s; rows are a
    training batch's tokens, fewer for a large model (to stay within budget_flops per matmul)."""
    rows = int(max(64, min(2048, budget_flops / (2 * d_model * d_ff))))
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, d_model, generator=generator)
    b = torch.randn(d_model, d_ff, generator=generator) / d_model**0.5
    pairs = {dtype: (a.to(dtype), b.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    result = {dtype: x @ w for dtype, (x, w) in pairs.items()}  # the warmup
    best = dict.fromkeys(pairs, float("inf"))
    started, rounds = time.perf_counter(), 0
    while rounds < 3 or (rounds < 20 and time.perf_counter() - started < budget_s):
        for dtype, (x, w) in pairs.items():
            start = time.perf_counter()
            x @ w
            best[dtype] = min(best[dtype], time.perf_counter() - start)
        rounds += 1
    exact = result[torch.float32]
    error = ((result[torch.bfloat16].float() - exact).norm() / exact.norm()).item()
    if not error < 2e-2:  # bf16 keeps 8 bits of mantissa: a relative error near 4e-3 is right
        return None
    return best[torch.float32] / max(best[torch.bfloat16], 1e-9)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed % 2**63)  # torch takes 64 bits: a huge seed would overflow


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def is_rank0() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    """print, from rank 0 only."""
    if is_rank0():
        print(*args, **kwargs)
