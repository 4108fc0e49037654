"""BENCHMARKS.md and results.json from one run's results."""

from __future__ import annotations

import json
from pathlib import Path

HEADER = """# Benchmarks

Written by `python -m bench` ({mode}); do not edit by hand. {mode_note}

**Machine:** {machine}

Every comparison runs both sides in one process, interleaved (A B A B ...) after warm-up; each
number is the median of the runs shown. **ratio = lmforge / other**: for tok/s and MB/s above 1
means lmforge is faster; for TTFT, load time and memory below 1 means lmforge is better.
"""
MODE_NOTES = {
    "full": "`make bench` ran every shape.",
    "quick": "**Quick run** (`make bench-quick`): fewer shapes and repeats; `make bench` runs them all.",
    "smoke": "**Smoke run**: one tiny shape, 2 repeats, to test the machinery; the numbers mean nothing.",
}
TRAIN_NOTE = """Tokens/s of a whole optimizer step (forward, backward, clip, fused AdamW) on the same weights,
data, batch and precision. MFU = (6 N + 12 n_layers d_model T) x tokens/s / the matmul ceiling of that
dtype above (N: parameters without position embeddings). {memory} Transformers attention: `{attn}`
(its default); eager mode on both sides.
"""
MEMORY_NOTE = """Peak memory: how far the peak RSS (VmHWM, reset after
imports; ru_maxrss off Linux) rises in a fresh subprocess that builds the model and optimizer and takes
{steps} steps: weights, gradients, AdamW state and activations."""
GENERATE_NOTE = """Greedy decoding with the KV cache, exactly {new} new tokens per row (EOS ignored), same weights
on both sides; a batch holds prompts of different lengths (left-padded). Decode tok/s counts the tokens
after the first over the time after it; TTFT is prefill plus the first token. Greedy agreement: the
share of identical tokens (random weights make near-ties, so rounding alone may flip a few).
"""
DATA_NOTE = """`lmforge prepare` with an existing byte-level BPE tokenizer (reads the files, counts and splits
documents, tokenizes, writes token files) against `tokenizers`' `encode_batch` alone on the same text in
memory. Corpus: the first files of the built-in corpus (Python's standard library).
"""


def write(results: dict, markdown_path: Path, json_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(render(results), encoding="utf-8")


def render(results: dict) -> str:
    parts = [
        HEADER.format(
            mode=results["mode"],
            mode_note=MODE_NOTES[results["mode"]],
            machine=describe_machine(results["machine"]),
        ),
        _ceilings(results["ceilings"], results.get("memory_read")),
        _train(results["train"]),
        _generate(results["generate"], results.get("memory_read")),
        _data(results["data"]),
        *([_gguf(results["gguf"])] if "gguf" in results else []),
        *([_quant(results["quant"])] if "quant" in results else []),
        *([_serving(results["serving"])] if "serving" in results else []),
        *([_profile(results["profile"])] if "profile" in results else []),
        *([_gpu(results["gpu"])] if "gpu" in results else []),
    ]
    return "\n".join(parts)


def describe_machine(m: dict) -> str:
    """The machine line: CPU, cores, threads, versions, bf16 flags, date."""
    flags = ", ".join(f"{name} {'yes' if present else 'no'}" for name, present in m["flags"].items())
    bf16 = "native bf16" if m["native_bf16"] else "no native bf16"
    return (
        f"{m['cpu']}, {m['cores']} cores; torch {m['torch']} ({m['torch_threads']} threads), "
        f"transformers {m['transformers']}, tokenizers {m['tokenizers']}, Python {m['python']}; "
        f"{flags} ({bf16}); {m['date']}."
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _num(x: float | None, digits: int = 0) -> str:
    return "not measured" if x is None else f"{x:,.{digits}f}"


def _ratio(x: float | None) -> str:
    return "" if x is None else f"**{x:.2f}**"


def _percent(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def _ceilings(rows: list[dict], read: dict | None) -> str:
    body = [[r["dtype"], str(r["n"]), _num(r["gflops"], 1), str(r["runs"])] for r in rows]
    note = (
        "torch's own (n, n) @ (n, n) matmul, the fastest of the runs; the best size of each dtype is the MFU "
        "denominator below. "
        "Without native bf16 it is emulated (about a hundred times slower), so it is measured at one "
        "small size only.\n\n"
    )
    text = "## Matmul ceilings\n\n" + note + _table(["dtype", "n (n x n @ n x n)", "GFLOP/s", "runs"], body)
    if read:
        text += (
            f"\n\n**Streaming reads:** {read['gbps']:.1f} GB/s (torch summing a {read['megabytes']:.0f} MB "
            f"float32 tensor, the fastest of {read['runs']} runs). Decoding reads every weight once per step, so "
            'this over the weights\' bytes bounds decode tok/s (the "bound" column below, times the batch).\n'
        )
    return text


def _skipped(row: dict, first: list[str], width: int) -> list[str]:
    return [*first, row["skipped"], *[""] * (width - len(first) - 1)]


def _train(rows: list[dict]) -> str:
    header = ["shape", "params", "precision", "batch x seq", "lmforge tok/s", "transformers tok/s", "ratio"]
    header += [
        "lmforge MFU",
        "transformers MFU",
        "lmforge peak MiB",
        "transformers peak MiB",
        "ratio",
        "runs",
    ]
    body = []
    for r in rows:
        first = [r["shape"], _params(r["params"]) if "params" in r else "", r["precision"]]
        if "skipped" in r:
            body.append(_skipped(r, first, len(header)))
            continue
        ours, theirs = r["lmforge"], r["transformers"]
        body.append(
            [
                *first,
                f"{r['batch_size']} x {r['seq_len']}",
                _num(ours["tokens_per_s"]),
                _num(theirs["tokens_per_s"]),
            ]
            + [_ratio(r["ratio"]["tokens_per_s"]), _percent(ours["mfu"]), _percent(theirs["mfu"])]
            + [_num(ours["peak_rss_mb"]), _num(theirs["peak_rss_mb"]), _ratio(r["ratio"].get("peak_rss_mb"))]
            + [str(r["runs"])]
        )
    measured = [r for r in rows if "skipped" not in r]
    steps = measured[0]["memory_steps"] if measured else 0
    note = TRAIN_NOTE.format(
        memory=MEMORY_NOTE.format(steps=steps) if steps else "Peak memory is not measured in this mode.",
        attn=measured[0]["attn_implementation"] if measured else "n/a",
    )
    return "## Training\n\n" + note + "\n" + _table(header, body)


def _generate(rows: list[dict], read: dict | None) -> str:
    header = ["shape", "precision", "batch", "prompt tokens", "lmforge decode tok/s"]
    header += ["transformers decode tok/s", "ratio", "bound tok/s", "lmforge TTFT ms", "transformers TTFT ms"]
    header += ["ratio", "greedy agreement", "runs"]
    body = []
    for r in rows:
        first = [r["shape"], r["precision"], str(r["batch_size"])]
        if "skipped" in r:
            body.append(_skipped(r, first, len(header)))
            continue
        ours, theirs = r["lmforge"], r["transformers"]
        lens = r["prompt_lens"]
        body.append(
            [*first, str(lens[0]) if len(lens) == 1 else f"{lens[0]}-{lens[-1]}"]
            + [_num(ours["decode_tokens_per_s"]), _num(theirs["decode_tokens_per_s"])]
            + [
                _ratio(r["ratio"]["decode_tokens_per_s"]),
                _num(r["batch_size"] * read["gbps"] * 1e9 / r["weight_bytes"])
                if read and r.get("weight_bytes")
                else "",
                _num(ours["ttft_ms"], 1),
                _num(theirs["ttft_ms"], 1),
            ]
            + [_ratio(r["ratio"]["ttft_ms"]), f"{100 * r['greedy_agreement']:.0f}%", str(r["runs"])]
        )
    new = next((r["new_tokens"] for r in rows if "new_tokens" in r), 0)
    return "## Generation\n\n" + GENERATE_NOTE.format(new=new) + "\n" + _table(header, body)


def _data(rows: list[dict]) -> str:
    header = ["corpus MB", "files", "tokens", "lmforge prepare MB/s", "tokenizers encode_batch MB/s"]
    header += ["ratio", "runs"]
    body = [
        [_num(r["megabytes"], 2), str(r["files"]), _num(r["tokens"]), _num(r["lmforge"]["mb_per_s"], 2)]
        + [_num(r["tokenizers"]["mb_per_s"], 2), _ratio(r["ratio"]["mb_per_s"]), str(r["runs"])]
        for r in rows
    ]
    return "## Data preparation\n\n" + DATA_NOTE + "\n" + _table(header, body)


GGUF_NOTE = """The real SmolLM2-135M-Instruct GGUF file ({file}, {mb:.0f} MB, Q4_1; `make install` installs it),
lmforge as `lmforge generate --model FILE [--quantize MODE] [--use-compile]` runs it (bench/gguf.py).
Load: `lmforge.load_model` on the file, then `fuse_projections`, against `transformers`'
`from_pretrained(dir, gguf_file=...)`, both dequantizing every tensor to float32 with the `gguf` package;
lmforge int4 builds its layers straight from the file's Q4_1 blocks instead. Decode: greedy, {new} new
tokens after a {prompt}-token chat prompt. lmforge float32 is fused (q/k/v and gate/up one layer each);
int8 / int4 are quantized at load (`--quantize`, lmforge/nn/quant.py: weight-only, on PyTorch's CPU
kernels); "int4, compiled" is the int4 model with its decode step under torch.compile on a static KV cache
(`--use-compile`), compiled before the timed rounds; that cache is as long as the whole generation and
its attention reads every slot at every step, so the compiled mode wins on short generations like this
one and loses on long ones (README). transformers decodes in float32; llama.cpp
(llama-cpp-python, built by `make bench`) decodes the same file in its own Q4_1 kernels.
"""


def _gguf_mode(side: str) -> str:
    return side.removeprefix("lmforge").strip() or "float32"


def _gguf_decode_row(row: dict, side: str, theirs: dict, cpp) -> list[str]:
    """Decode tok/s of one lmforge mode against transformers' float32 and llama.cpp."""
    mode = _gguf_mode(side)
    label = f"decode tok/s (lmforge {mode})"
    label = f"**{label}**, the fastest" if row.get("fastest") == side else label
    cpp_rate = _num(cpp["decode_tokens_per_s"], 1) if isinstance(cpp, dict) else cpp
    if "decode_tokens_per_s" not in row.get(side, {}):
        why = row.get(side, {}).get("compile_failed")
        return [label, f"not measured: {why}" if why else "not measured", "", "", cpp_rate, ""]
    key = "decode_tokens_per_s" if side == "lmforge" else f"{mode} decode_tokens_per_s"
    return [
        label,
        _num(row[side]["decode_tokens_per_s"], 1),
        _num(theirs["decode_tokens_per_s"], 1),
        _ratio(row["ratio"].get(key)),
        cpp_rate,
        _ratio(row.get("ratios_llama_cpp", {}).get(side)),
    ]


def _gguf_summary(row: dict) -> str:
    """The fastest lmforge mode's ratios, and what the compiled mode's first call cost (or why it failed)."""
    fastest, compiled = row["fastest"], row.get("lmforge int4, compiled", {})
    mode = _gguf_mode(fastest)
    key = "decode_tokens_per_s" if fastest == "lmforge" else f"{mode} decode_tokens_per_s"
    text = f"lmforge's fastest mode here: **{mode}**, {_ratio(row['ratio'][key])}x transformers float32"
    cpp = row.get("ratios_llama_cpp", {}).get(fastest)
    text += f" and {_ratio(cpp)}x llama.cpp." if cpp is not None else " (llama.cpp not measured)."
    if "compile_failed" in compiled:
        text += (
            f" torch.compile failed here ({compiled['compile_failed']}): lmforge decoded eagerly, so the "
            "compiled mode has no figure."
        )
    elif "call_s" in compiled:
        text += (
            f" The compiled mode's first call took {compiled['first_call_s']:.1f} s, a later one "
            f"{compiled['call_s']:.2f} s: the compilation, which a process pays once (less when inductor's "
            "on-disk cache holds it from an earlier run)."
        )
    return text + "\n"


def _gguf(row: dict) -> str:
    if "skipped" in row:
        return f"## A real GGUF model\n\nNot measured: {row['skipped']}.\n"
    theirs, cpp = row["transformers"], row["llama_cpp"]
    header = ["", "lmforge", "transformers", "ratio", "llama.cpp", "lmforge / llama.cpp"]
    loads = [("lmforge", "load_s"), ("lmforge int4", "int4 load_s")]
    body = [
        [f"load s (lmforge {_gguf_mode(side)})", _num(row[side]["load_s"], 2), _num(theirs["load_s"], 2)]
        + [_ratio(row["ratio"].get(key)), "", ""]
        for side, key in loads
        if "load_s" in row.get(side, {})
    ]
    sides = ("lmforge", "lmforge int8", "lmforge int4", "lmforge int4, compiled")
    body += [_gguf_decode_row(row, side, theirs, cpp) for side in sides]
    note = GGUF_NOTE.format(
        file=row["file"], mb=row["megabytes"], new=row["new_tokens"], prompt=row["prompt_tokens"]
    )
    summary = "\n" + _gguf_summary(row) if "fastest" in row else ""
    return "## A real GGUF model\n\n" + note + "\n" + _table(header, body) + summary


SERVING_NOTE = """`lmforge serve` (a real server subprocess, float32, `--max-batch 8`) under 1, 4 and 8 concurrent
streaming clients, each a thread streaming one `/v1/completions` request: a {prompt}-token prompt,
{new} new tokens (`ignore_eos`), sampled. Total tok/s: every client's tokens over the wall time of the
round. TTFT: the median client's time to its first text, so it includes waiting for the others'
prefills. There is no other side: the 8-to-1 ratio is what continuous batching buys over one stream.
"""


def _serving(rows: list[dict]) -> str:
    header = ["model", *(f"{n} client{'s' * (n > 1)} tok/s" for n in (1, 4, 8))]
    header += [*(f"TTFT ms ({n})" for n in (1, 4, 8)), "8 / 1", "runs"]
    body = [
        [r["model"], *(_num(r[n]["tokens_per_s"], 1) for n in ("1", "4", "8"))]
        + [*(_num(r[n]["ttft_ms"]) for n in ("1", "4", "8")), _ratio(r["ratio_8_to_1"]), str(r["runs"])]
        for r in rows
    ]
    note = SERVING_NOTE.format(prompt=rows[0]["prompt_tokens"], new=rows[0]["max_tokens"]) if rows else ""
    return "## Serving\n\n" + note + "\n" + _table(header, body)


def _quant(results: dict) -> str:
    from bench.quant import markdown

    return markdown(results)


def _profile(results: dict) -> str:
    from bench.profile import markdown

    return markdown(results)


def _gpu(result: dict) -> str:
    """The GPU section (bench/gpu.py): the CPU sections' tables for the 124M shape on CUDA, or why not."""
    if "skipped" in result:
        return f"## GPU\n\nNot measured: {result['skipped']}.\n"
    note = (
        f"The 124M GPT-2 shape on {result['device']}, measured as the CPU sections above measure it "
        "(MFU and peak memory are not measured here).\n"
    )
    decode = _generate(result["generate"], None).replace("## Generation", "### Decoding (GPU)", 1)
    train = _train(result["train"]).replace("## Training", "### Training (GPU)", 1)
    return "## GPU\n\n" + note + "\n" + decode + "\n" + train
