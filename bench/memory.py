"""Peak memory of training, measured in a fresh subprocess per (side, shape, precision).

tracemalloc does not see torch's allocations, and a process's peak RSS only ever grows, so each
measurement runs alone: import everything (and whatever torch imports on first use), reset and note
the peak RSS, build the model and optimizer, take a few training steps, and report how far the peak
rose. That covers weights, gradients, AdamW state and the largest step's activations, but not the
libraries.

On Linux the peak is VmHWM from /proc/self/status, reset through /proc/self/clear_refs.
NOTE: getrusage's ru_maxrss cannot be used there: exec carries the parent's RSS at fork time into
the child's ru_maxrss, so a child of the (large) benchmark process would report no rise at all.
Elsewhere ru_maxrss is the fallback.

Run as `python -m bench.memory '{"side": ..., "case": {...}, "steps": N}'`; prints one JSON line.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATUS = Path("/proc/self/status")


def _reset_peak() -> None:
    """Lower the peak RSS to the current RSS (Linux 4.0+), so that a transient peak while importing
    cannot hide a smaller model's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _max_rss_mb() -> float:
    """The peak resident set size in MiB."""
    if STATUS.exists():
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def peak_rss_mb(side: str, case, *, steps: int) -> float:
    """MiB the peak RSS rises by while `side` builds and trains `case` for `steps` steps."""
    spec = json.dumps({"side": side, "case": asdict(case), "steps": steps})
    proc = subprocess.run(
        [sys.executable, "-m", "bench.memory", spec], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {side} {case} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def _load_lazy_modules(autocast) -> None:
    """One AdamW step on a 2 x 2 layer: the modules torch imports on first use are not the model's memory."""
    import torch

    from lmforge.train.optim import make_optimizer

    layer = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(layer, lr=1e-4, weight_decay=0.1)
    with autocast():
        layer(torch.ones(1, 2)).sum().backward()
    torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0)
    optimizer.step()


def main(spec: dict) -> dict:
    from bench.train import STEPS, TrainCase, autocast_for, build_side, config_for, random_tokens
    from lmforge.train.optim import make_optimizer

    side, case = spec["side"], TrainCase(**spec["case"])
    if side == "transformers":
        import transformers

        transformers.GPT2LMHeadModel  # noqa: B018  (the lazy import happens here, before the baseline)
    config = config_for(case)
    tokens = random_tokens(config.vocab_size, case.batch_size, case.seq_len)
    _load_lazy_modules(autocast_for(case.precision))
    _reset_peak()
    before = _max_rss_mb()
    model = build_side(side, config)
    model.train()
    optimizer = make_optimizer(model, lr=1e-4, weight_decay=0.1)
    for _ in range(spec["steps"]):
        STEPS[side](model, optimizer, tokens, autocast_for(case.precision))
    return {"peak_rss_mb": _max_rss_mb() - before}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
