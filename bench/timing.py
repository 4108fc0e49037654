"""Interleaved measurement: both sides of a comparison run in one process, A B A B ..., after warm-up,
so that a machine getting busier or cooler mid-run slows both sides alike; medians resist outliers.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable

from tqdm import tqdm

Run = Callable[[], dict[str, float]]


def interleave(sides: dict[str, Run], *, warmup: int, repeats: int, label: str) -> dict[str, dict]:
    """Run every side `warmup` times, then `repeats` rounds of one run each; per side, the median of
    each metric the runs return and the raw runs."""
    # Everything alive now (imported libraries, the models) outlives the runs: frozen, it is not
    # scanned by the collection before each run, which keeps that collection fast.
    gc.collect()
    gc.freeze()
    try:
        for _ in range(warmup):
            for run in sides.values():
                run()
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        for _ in tqdm(range(repeats), desc=label, unit="round", leave=False, dynamic_ncols=True):
            for name, run in sides.items():
                gc.collect()  # one triggered mid-run would be charged to whichever side ran then
                runs[name].append(run())
    finally:
        gc.unfreeze()  # so the models can be collected once the caller drops them
    return {
        name: {"median": {m: statistics.median(r[m] for r in rows) for m in rows[0]}, "runs": rows}
        for name, rows in runs.items()
    }


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of fn takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs, or None where either side has no number."""
    if ours is None or theirs is None or theirs == 0 or not math.isfinite(ours / theirs):
        return None
    return ours / theirs
