"""Where the time goes: torch.profiler over both sides of two comparisons, in the same run as the rest
of `make bench`: the tiny shape's training step (bench/train.py's steps, on the same weights, data and
AdamW) and the demo shape's batch-1 greedy decode (bench/generate.py's runs).

Per side: the aten ops with the most self CPU time; that time split into matmul kernels, attention
kernels and every other aten op; and the time outside aten (Python, module calls, autograd and
dispatch bookkeeping), between the wall time of unprofiled runs and that of profiled ones, less the
aten self time. Of interleaved rounds (A B A B ...), like every other comparison here, each side's round of
median wall time is shown.

NOTE: the profiler adds a microsecond or two to every op it records, partly inside the op's self time,
so a side that runs many small ops (decoding, a training step's ~2,500) reads a little heavier inside
aten than it runs unprofiled; hence two bounds on the time outside it.

Run alone as `python -m bench.profile [--quick]`: it prints the section it would write.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import gc
import os
import sys
from collections.abc import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.timing import timed

MATMUL_OPS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::_addmm_activation",
        "aten::linear",
        "aten::matmul",
        "aten::_weight_int8pack_mm",
        "aten::_weight_int4pack_mm_for_cpu",
    }
)
TOP = 8  # ops listed per side


def is_attention(op: str) -> bool:
    """The fused attention kernels (SDPA's flash or math paths, forward and backward)."""
    return "scaled_dot_product" in op


@contextlib.contextmanager
def _stderr_silenced():
    """fd 2 pointed at /dev/null: Kineto prints a line to it whenever the profiler starts or stops."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profiled(run: Callable[[], object], calls: int) -> tuple[float, dict[str, tuple[float, float]]]:
    """The wall ms per call of `run` under the profiler, over `calls` calls, and {aten op: (self CPU ms,
    calls of the op)} per call."""
    prof = profile(activities=[ProfilerActivity.CPU])
    with _stderr_silenced():
        prof.start()
    try:
        seconds = timed(lambda: [run() for _ in range(calls)])
    finally:
        with _stderr_silenced():
            prof.stop()
    # NOTE: the raw events, not key_averages(): building its Python event tree takes seconds for the
    # ~80,000 ops of one decode, which is most of this section's cost.
    totals = self_times(prof.profiler.kineto_results.events())
    ops = {op: (ns / 1e6 / calls, n / calls) for op, (ns, n) in totals.items() if op.startswith("aten::")}
    return 1e3 * seconds / calls, ops


def self_times(events) -> dict[str, list[int]]:
    """{op: [self ns, calls]} of the profiler's CPU events: each op's duration less that of the ops
    nested directly inside it on the same thread (its children), as key_averages() counts self time.
    An op nested in one of its own name (a redispatch) is the same call."""
    threads: dict[int, list[tuple[int, int, str]]] = collections.defaultdict(list)
    for e in events:
        if e.device_type() == DeviceType.CPU:
            threads[e.start_thread_id()].append((e.start_ns(), e.end_ns(), e.name()))
    totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])

    def close(span: list) -> None:
        start, end, name, children, is_call = span
        totals[name][0] += end - start - children
        totals[name][1] += is_call

    for spans in threads.values():
        spans.sort(key=lambda s: (s[0], -s[1]))  # a parent before the children that start with it
        open_spans: list[list] = []  # [start, end, name, children's ns, is_call], innermost last
        for start, end, name in spans:
            while open_spans and open_spans[-1][1] <= start:
                close(open_spans.pop())
            parent = open_spans[-1] if open_spans else None
            if parent:
                parent[3] += end - start
            open_spans.append([start, end, name, 0, not parent or parent[2] != name])
        while open_spans:
            close(open_spans.pop())
    return totals


def breakdown(wall_ms: float, profiled_ms: float, ops: dict[str, tuple[float, float]]) -> dict[str, float]:
    """One round of one side, in ms per call: wall (unprofiled), aten self time and its parts, and the
    time outside aten, at least (unprofiled wall - aten) and at most (profiled wall - aten)."""
    aten = sum(ms for ms, _ in ops.values())
    matmul = sum(ms for op, (ms, _) in ops.items() if op in MATMUL_OPS)
    attention = sum(ms for op, (ms, _) in ops.items() if is_attention(op))
    return {
        "ms": wall_ms,
        "aten_ms": aten,
        "matmul_ms": matmul,
        "attention_ms": attention,
        "other_aten_ms": aten - matmul - attention,
        "outside_aten_ms": max(0.0, wall_ms - aten),
        "outside_aten_max_ms": max(0.0, profiled_ms - aten),
        "aten_calls": sum(count for _, count in ops.values()),
    }


def measure(sides: dict[str, Callable[[], object]], *, warmup: int, rounds: int, calls: int) -> dict:
    """Per side and round: `calls` unprofiled calls (the wall time), then `calls` profiled ones (the aten
    ops); the rounds interleave the sides. Per side: the round of median wall time, whole, so that its
    parts add up (medians of each part, taken apart, need not)."""
    for _ in range(warmup):
        for run in sides.values():
            run()
    rounds_of: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, run in sides.items():
            gc.collect()  # one triggered mid-run would be charged to whichever side ran then
            wall_ms = 1e3 * timed(lambda run=run: [run() for _ in range(calls)]) / calls
            gc.collect()
            profiled_ms, ops = profiled(run, calls)
            row = breakdown(wall_ms, profiled_ms, ops)
            rounds_of[name].append({**row, "ops": {op: ms for op, (ms, _) in ops.items()}})
    return {name: sorted(rows, key=lambda r: r["ms"])[len(rows) // 2] for name, rows in rounds_of.items()}


def summarize(side: dict, units: int) -> dict:
    """One side's round per unit (a training step, a generated token) and its top ops with their
    share of the wall time."""
    row = {key: value / units for key, value in side.items() if key != "ops"}
    top = sorted(side["ops"].items(), key=lambda kv: -kv[1])[:TOP]
    row["top"] = [{"op": op, "ms": ms / units, "share": ms / side["ms"]} for op, ms in top]
    return row


def _train_sides(shape: str, batch_size: int, seq_len: int) -> dict[str, Callable[[], None]]:
    """One training step of each side, exactly as bench/train.py times it (float32)."""
    from bench import train
    from lmforge.train.optim import make_optimizer

    case = train.TrainCase(shape, batch_size, seq_len, "float32")
    config = train.config_for(case)
    tokens = train.random_tokens(config.vocab_size, batch_size, seq_len)
    sides = {}
    for side, model in zip(train.STEPS, train.same_weight_pair(config)):
        model.train()
        optimizer = make_optimizer(model, lr=train.LR, weight_decay=0.1)
        sides[side] = functools.partial(
            train.STEPS[side], model, optimizer, tokens, train.autocast_for("float32")
        )
    return sides


def _decode_sides(shape: str, batch_size: int, prompt_len: int, new_tokens: int) -> dict:
    """One greedy generation of each side, exactly as bench/generate.py runs it (float32)."""
    from bench import generate
    from bench.train import same_weight_pair
    from lmforge.models import get_preset

    case = generate.GenerateCase(shape, "float32", batch_size, prompt_len, new_tokens)
    base = get_preset(shape)
    config = get_preset(shape, max_seq_len=max(base.max_seq_len, prompt_len + new_tokens))
    models = [m.eval() for m in same_weight_pair(config)]
    models[0].fuse_projections()  # as bench/generate.py (and the generate verb) decode
    prompts = generate.prompts_for(case, config.vocab_size)
    runs = (generate.lmforge_run, generate.transformers_run)
    return {
        side: functools.partial(run, model, prompts, new_tokens)
        for side, model, run in zip(("lmforge", "transformers"), models, runs)
    }


def run(train_case: tuple, generate_case: tuple, *, warmup: int, rounds: int) -> dict:
    """Both comparisons: train_case is (preset, batch_size, seq_len); generate_case (preset, batch_size,
    prompt_len, new_tokens), as in bench/__main__.py's plans."""
    shape, batch_size, seq_len = train_case
    measured = measure(_train_sides(*train_case), warmup=warmup, rounds=rounds, calls=2)
    results = {
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "train": {
            "label": f"training step, {shape} float32, {batch_size} x {seq_len}",
            "unit": "step",
            **{side: summarize(m, 1) for side, m in measured.items()},
        },
    }
    shape, batch_size, prompt_len, new_tokens = generate_case
    measured = measure(_decode_sides(*generate_case), warmup=warmup, rounds=rounds, calls=1)
    results["decode"] = {
        "label": f"greedy decode, {shape} float32, batch {batch_size}, {prompt_len}-token prompt + {new_tokens} new",
        "unit": "token",
        **{side: summarize(m, new_tokens) for side, m in measured.items()},
    }
    return results


PROFILE_NOTE = """torch.profiler (CPU, {threads}) over both sides of two comparisons above, on the same
weights and inputs, in {rounds} interleaved rounds (each round: unprofiled runs, then profiled ones);
each side's round of median wall time is shown. Matmuls: the self time of `mm`, `addmm`, `bmm`,
`baddbmm`, `linear`, `matmul` (and the int8/int4 weight-only kernels); attention: SDPA's fused kernels
(forward and backward). Outside aten: Python, module calls, autograd and dispatch bookkeeping, between
two bounds, because the profiler's own cost per op lands partly inside aten and partly outside: at least
the unprofiled wall time minus the aten self time, at most the profiled wall time minus it. Shares are
of the unprofiled wall time. A decode token's figures are the whole generation (prefill included) over
the tokens generated.
"""


def _ms_share(ms: float, whole: float) -> str:
    return f"{ms:,.2f} ({100 * ms / whole:.0f}%)"


def _comparison(row: dict) -> str:
    unit = row["unit"]
    header = ["side", f"ms per {unit}", "matmuls", "attention", "other aten", "outside aten (Python)"]
    header.append(f"aten calls per {unit}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for side in ("lmforge", "transformers"):
        s = row[side]
        cells = [side, f"{s['ms']:,.2f}"]
        cells += [_ms_share(s[k], s["ms"]) for k in ("matmul_ms", "attention_ms", "other_aten_ms")]
        low, high = s["outside_aten_ms"], s["outside_aten_max_ms"]
        cells += [f"{low:,.2f}-{high:,.2f} ({100 * low / s['ms']:.0f}-{100 * high / s['ms']:.0f}%)"]
        cells.append(f"{s['aten_calls']:,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| # | lmforge op | ms | share | transformers op | ms | share |", "|" + " --- |" * 7]
    ours, theirs = row["lmforge"]["top"], row["transformers"]["top"]
    for i in range(max(len(ours), len(theirs))):
        cells = [str(i + 1)]
        for top in (ours, theirs):
            op = top[i] if i < len(top) else None
            cells += (
                [f"`{op['op']}`", f"{op['ms']:,.2f}", f"{100 * op['share']:.0f}%"] if op else ["", "", ""]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return f"### {row['label'][0].upper()}{row['label'][1:]}\n\n" + "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    """The BENCHMARKS.md section "Where the time goes"."""
    threads = f"{results['threads']} thread{'s' * (results['threads'] > 1)}"
    note = PROFILE_NOTE.format(threads=threads, rounds=results["rounds"])
    parts = [_comparison(results[key]) for key in ("train", "decode")]
    return "## Where the time goes\n\n" + note + "\n" + "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 5")
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    rounds = 3 if args.quick else 5
    print(markdown(run(("tiny", 8, 256), ("demo", 1, 128, 128), warmup=1, rounds=rounds)))


if __name__ == "__main__":
    main()
