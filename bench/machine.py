"""The machine a benchmark ran on, and the ceilings torch reaches on it: matmul throughput, which MFU
(model FLOP utilisation) is measured against, and streaming-read bandwidth, which bounds decoding (every
weight is read once per token).
"""

from __future__ import annotations

import datetime
import os
import platform

import torch

from bench.timing import interleave, timed
from lmforge.device import cpu_has_native_bf16, cpu_model_and_flags

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
EMULATED_BF16_SIZE = 512


def describe() -> dict:
    """CPU model, cores, threads, library versions, bf16-relevant CPU flags and the date."""
    import tokenizers
    import transformers

    model, flags = cpu_model_and_flags()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "flags": {name: name in flags for name in FLAGS},
        "native_bf16": cpu_has_native_bf16(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def matmul_ceilings(sizes: list[int], *, warmup: int, repeats: int) -> list[dict]:
    """GFLOP/s of an (n, n) @ (n, n) matmul in float32 and bfloat16, the best of `repeats` runs.

    Without native bf16 its matmul is emulated, about a hundred times slower: it is measured at one
    small size only, which is enough to show that.
    """
    bf16_sizes = sizes if cpu_has_native_bf16() else [min(*sizes, EMULATED_BF16_SIZE)]
    rows = []
    for n in sorted(set(sizes) | set(bf16_sizes)):
        sides = {}
        for dtype in (torch.float32, torch.bfloat16):
            if n in (sizes if dtype == torch.float32 else bf16_sizes):
                a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
                sides[str(dtype).removeprefix("torch.")] = lambda a=a, b=b: {"seconds": timed(lambda: a @ b)}
        result = interleave(sides, warmup=warmup, repeats=repeats, label=f"matmul n={n}")
        for dtype, r in result.items():
            # A ceiling is what torch can reach: the fastest run (this host's speed drifts with its
            # neighbours' load, and a median taken in a slow moment would put MFU above 100%).
            gflops = 2 * n**3 / min(run["seconds"] for run in r["runs"]) / 1e9
            rows.append({"dtype": dtype, "n": n, "gflops": gflops, "runs": len(r["runs"])})
    return sorted(rows, key=lambda row: (row["dtype"] != "float32", row["n"]))


def peak_flops(ceilings: list[dict], dtype: str) -> float:
    """FLOP/s: the best matmul throughput measured in this dtype."""
    return 1e9 * max(row["gflops"] for row in ceilings if row["dtype"] == dtype)


def memory_read_gbps(megabytes: float, *, warmup: int, repeats: int) -> dict:
    """GB/s of torch summing a float32 tensor of `megabytes` (far larger than the caches): how fast this
    machine streams memory, the best of `repeats` runs."""
    x = torch.ones(int(megabytes * 1e6) // 4)
    result = interleave(
        {"read": lambda: {"seconds": timed(lambda: x.sum())}}, warmup=warmup, repeats=repeats, label="read"
    )
    seconds = min(run["seconds"] for run in result["read"]["runs"])  # a ceiling: the fastest run
    return {
        "megabytes": megabytes,
        "gbps": x.numel() * 4 / seconds / 1e9,
        "runs": len(result["read"]["runs"]),
    }
