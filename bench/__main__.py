"""`python -m bench` (`make bench`): run every benchmark and rewrite BENCHMARKS.md and bench/results.json.

--quick (`make bench-quick`) runs fewer shapes and repeats in under two minutes on 2 cores; --smoke
runs one tiny shape twice, into --out, to test the machinery (tests/bench/test_bench_quick.py).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.memory import ROOT

_STARTED = time.perf_counter()


def say(message: str) -> None:
    """A progress line, with the seconds since the start."""
    print(f"[bench {time.perf_counter() - _STARTED:5.0f}s] {message}", flush=True)


@dataclass(frozen=True)
class Plan:
    ceiling_sizes: tuple[int, ...]
    train: tuple[tuple[str, int, int], ...]  # (preset, batch_size, seq_len)
    generate: tuple[tuple[str, int, int, int], ...]  # (preset, batch_size, longest prompt, new tokens)
    data_megabytes: float
    read_megabytes: float  # the tensor streamed to measure memory bandwidth
    repeats: int  # timed rounds of every comparison
    warmup: int  # untimed rounds before them
    memory_steps: int = (
        2  # training steps of each peak-memory subprocess (the second has AdamW state); 0: none
    )
    gguf_tokens: int = 64  # tokens decoded from the real SmolLM2 GGUF file; 0: that section is skipped
    serve_tokens: int = 64  # tokens each serving client streams; 0: the serving section is skipped
    serve_smollm2: bool = True  # serve SmolLM2 too, not only the demo shape


PLANS = {
    # NOTE: 124M in float32 on 2 cores takes seconds per step, hence its batch of 2 x 256.
    "full": Plan(
        ceiling_sizes=(1024, 2048, 4096),
        train=(("tiny", 8, 256), ("demo", 8, 256), ("gpt2", 2, 256)),
        generate=(("demo", 1, 128, 128), ("demo", 8, 128, 128), ("gpt2", 1, 128, 128), ("gpt2", 8, 128, 128)),
        data_megabytes=16.0,
        read_megabytes=512.0,
        repeats=7,
        warmup=2,
    ),
    "quick": Plan(
        ceiling_sizes=(1024, 2048),
        train=(("tiny", 8, 256), ("demo", 8, 256)),
        generate=(("demo", 1, 128, 128), ("demo", 8, 128, 128)),
        data_megabytes=2.0,
        read_megabytes=256.0,
        repeats=5,
        warmup=1,
        serve_tokens=32,
        serve_smollm2=False,
    ),
    "smoke": Plan(
        ceiling_sizes=(128,),
        train=(("tiny", 2, 32),),
        generate=(("tiny", 1, 16, 8), ("tiny", 2, 16, 8)),
        data_megabytes=0.05,
        read_megabytes=16.0,
        repeats=2,
        warmup=1,
        memory_steps=0,  # a subprocess per side costs seconds; tests/bench checks bench.memory alone
        gguf_tokens=0,  # loading a 135M model twice per side costs seconds too
        serve_tokens=0,  # a server subprocess per model costs seconds too
    ),
}
NO_BF16 = "no native bf16 on this CPU"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer shapes and repeats (under 2 minutes)")
    mode.add_argument("--smoke", action="store_true", help="one tiny shape, 2 repeats; needs --out")
    parser.add_argument("--out", type=Path, help="write BENCHMARKS.md and results.json here instead")
    parser.add_argument("--bf16", action="store_true", help="run bfloat16 even without native CPU support")
    args = parser.parse_args(argv)
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out DIR (it must not overwrite the repository's BENCHMARKS.md)")
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    return args


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run(plan: Plan, mode: str, *, bf16: bool) -> dict:
    """Every benchmark of `plan`; the results as report.write expects them."""
    from bench import data, machine

    _quiet_libraries()
    if mode == "smoke":
        # Its numbers mean nothing, and one thread keeps it fast on a machine busy with other work.
        import torch

        torch.set_num_threads(1)
    results: dict = {"mode": mode, "machine": machine.describe()}
    # The smoke run measures both on every CPU (emulated bf16 is slow but fine at its tiny size), so
    # what it produces does not depend on the machine.
    both = bf16 or mode == "smoke" or results["machine"]["native_bf16"]
    precisions = ["float32", "bfloat16"] if both else ["float32"]
    say(f"{mode} run on {report.describe_machine(results['machine'])}")
    results["ceilings"] = machine.matmul_ceilings(
        list(plan.ceiling_sizes), warmup=max(plan.warmup, 3), repeats=plan.repeats
    )
    for row in results["ceilings"]:
        say(f"matmul {row['dtype']} n={row['n']}: {row['gflops']:.1f} GFLOP/s")
    results["memory_read"] = machine.memory_read_gbps(
        plan.read_megabytes, warmup=max(plan.warmup, 3), repeats=plan.repeats
    )
    say(f"streaming read: {results['memory_read']['gbps']:.1f} GB/s")
    results["train"] = _train_rows(plan, precisions, results["ceilings"])
    results["generate"] = _generate_rows(plan, precisions)
    row = data.run_case(data.DataCase(plan.data_megabytes), warmup=plan.warmup, repeats=plan.repeats)
    results["data"] = [row]
    _print_row(f"data {row['megabytes']:.2f} MB", row, "mb_per_s")
    if plan.gguf_tokens:
        from bench import gguf

        results["gguf"] = row = gguf.run_case(
            warmup=plan.warmup, repeats=plan.repeats, new_tokens=plan.gguf_tokens
        )
        if "skipped" in row:
            say(f"SmolLM2 GGUF: {row['skipped']}")
        else:
            _print_row("SmolLM2 GGUF", row, "load_s", "decode_tokens_per_s")
    if plan.gguf_tokens:
        from bench import quant

        results["quant"] = quant.run(quick=mode == "quick")
    if plan.serve_tokens:
        results["serving"] = _serving_rows(plan)
    results["profile"] = _profile(plan)
    if mode == "full":
        from bench import gpu

        results["gpu"] = gpu.run(warmup=plan.warmup, repeats=plan.repeats)
        say(f"GPU: {results['gpu'].get('skipped') or results['gpu']['device']}")
    return results


def _profile(plan: Plan) -> dict:
    from bench import profile

    # The first training and decoding comparisons of the plan: tiny 8 x 256, demo batch 1 (full, quick).
    result = profile.run(plan.train[0], plan.generate[0], warmup=plan.warmup, rounds=min(plan.repeats, 5))
    for key in ("train", "decode"):
        row = result[key]
        shares = "; ".join(
            f"{side} {row[side]['ms']:.2f} ms, matmuls {row[side]['matmul_ms'] / row[side]['ms']:.0%}, "
            f"outside aten {row[side]['outside_aten_ms'] / row[side]['ms']:.0%}"
            for side in ("lmforge", "transformers")
        )
        say(f"profile {row['label']}, per {row['unit']}: {shares}")
    return result


def _serving_rows(plan: Plan) -> list[dict]:
    from bench import serving

    rows = serving.run_case(
        warmup=min(plan.warmup, 1),
        repeats=max(1, min(plan.repeats, 3)),
        max_tokens=plan.serve_tokens,
        smollm2=plan.serve_smollm2,
    )
    for row in rows:
        rates = ", ".join(f"{n} clients {row[n]['tokens_per_s']:.1f}" for n in ("1", "4", "8"))
        say(f"serve {row['model']}: tok/s {rates}; 8 / 1 = {row['ratio_8_to_1']:.2f}")
    return rows


def _train_rows(plan: Plan, precisions: list[str], ceilings: list[dict]) -> list[dict]:
    from bench import machine, train

    rows = []
    for precision in ("float32", "bfloat16"):
        for shape, batch_size, seq_len in plan.train:
            if precision not in precisions:
                rows.append({"shape": shape, "precision": precision, "skipped": NO_BF16})
                continue
            case = train.TrainCase(shape, batch_size, seq_len, precision)
            peak = machine.peak_flops(ceilings, precision)
            row = train.run_case(
                case, peak=peak, warmup=plan.warmup, repeats=plan.repeats, memory_steps=plan.memory_steps
            )
            rows.append(row)
            label = f"train {shape} {precision} {batch_size}x{seq_len}"
            _print_row(label, row, "tokens_per_s", "peak_rss_mb")
    return rows


def _generate_rows(plan: Plan, precisions: list[str]) -> list[dict]:
    from bench import generate

    rows = []
    for precision in ("float32", "bfloat16"):
        for shape, batch_size, prompt_len, new_tokens in plan.generate:
            if precision not in precisions:
                rows.append(
                    {"shape": shape, "precision": precision, "batch_size": batch_size, "skipped": NO_BF16}
                )
                continue
            case = generate.GenerateCase(shape, precision, batch_size, prompt_len, new_tokens)
            row = generate.run_case(case, warmup=plan.warmup, repeats=plan.repeats)
            rows.append(row)
            _print_row(
                f"generate {shape} {precision} batch {batch_size}", row, "decode_tokens_per_s", "ttft_ms"
            )
    return rows


def _print_row(label: str, row: dict, *metrics: str) -> None:
    other = next(side for side in row if side in ("transformers", "tokenizers"))
    shown = [
        f"{m} {row['lmforge'][m]:,.1f} vs {row[other][m]:,.1f} (ratio {row['ratio'][m]:.2f})"
        for m in metrics
        if row["ratio"].get(m) is not None
    ]
    say(f"{label}: lmforge vs {other}: " + "; ".join(shown))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    results = run(PLANS[args.mode], args.mode, bf16=args.bf16)
    results["elapsed_s"] = time.perf_counter() - started
    markdown = (args.out or ROOT) / "BENCHMARKS.md"
    json_path = (args.out or ROOT / "bench") / "results.json"
    report.write(results, markdown, json_path)
    say(f"wrote {markdown} and {json_path}")
    return results


if __name__ == "__main__":
    main()
