"""Weight-only int8 / int4 decoding on the CPU (lmforge/nn/quant.py) on the real SmolLM2-135M-Instruct:
its quality and its speed against float32. `python -m bench.quant [--quick] [--out DIR]`.

Every variant loads the same GGUF file (Q4_1 blocks, its head tied to a Q8_0 embedding) and is fused for
decoding (`fuse_projections`), as the CLI's decoding verbs do. The main variants are what users get:
float32 and bfloat16 by `lmforge.load_model` (dequantized), int8 and int4 by `load_model(path,
quantize=...)` (`--quantize`), whose int4 layers take the file's Q4_1 codes as they are (lmforge/gguf/
blocks.py). The other variants load float32 (or bfloat16) and re-derive their codes with `quantize_model`.
NOTE: so float32 here is itself a 4-bit model, and "int4" is that same 4-bit model on int4 kernels (its
scales rounded to bfloat16): near lossless by construction. int4 in groups of 64 straddles two GGUF blocks
and shows what re-quantizing costs; on a model trained in float, int4 would lose more than either shows.

Quality, on bench/quant_text.txt (English prose written for this benchmark, so in no training set):
perplexity over the whole text in one pass, top-1 agreement of each position's next token with
float32's (teacher-forced), and greedy replies to CHAT_PROMPTS. Speed: batch-1 greedy decoding of
NEW_TOKENS tokens after a chat prompt, every variant in interleaved rounds (bench.timing), medians.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

TEXT = Path(__file__).with_name("quant_text.txt")
CHAT_PROMPTS = (
    "What is the capital of France? Answer in one long paragraph.",
    "Give me three tips for writing clear emails.",
    "Explain why the sky is blue to a ten-year-old.",
)
SPEED_PROMPT = CHAT_PROMPTS[0]
NEW_TOKENS = 64
REPLY_TOKENS = 48


@dataclass(frozen=True)
class Variant:
    dtype: torch.dtype = torch.float32  # the weights' dtype at load
    at_load: str | None = None  # load_model's `quantize` (--quantize): int4 straight from the file's blocks
    quantize: dict | None = None  # else quantize_model's arguments, on the loaded float model
    float_activations: bool = False  # float32 activations in the quantized layers


VARIANTS = {
    "float32": Variant(),
    "bfloat16": Variant(torch.bfloat16),
    "int8": Variant(at_load="int8"),
    "int4": Variant(at_load="int4"),
    "int8 (float32 activations)": Variant(quantize={"mode": "int8"}, float_activations=True),
    "int4 (float head)": Variant(quantize={"mode": "int4", "head": None}),
    "int4 (int4 head)": Variant(quantize={"mode": "int4", "head": "int4"}),
    "int4 (groups of 64)": Variant(quantize={"mode": "int4", "group_size": 64}),
    "int8 (bfloat16 model)": Variant(torch.bfloat16, quantize={"mode": "int8"}),
    "int4 (bfloat16 model)": Variant(torch.bfloat16, quantize={"mode": "int4"}),
}
MAIN = ("float32", "bfloat16", "int8", "int4")  # --quick measures only these; replies are shown for these


def load_variant(path, name: str):
    """The SmolLM2 model as variant `name` says, fused for decoding (lmforge/cli.py, _load_model)."""
    import lmforge
    from lmforge.nn.quant import quantize_model

    variant = VARIANTS[name]
    model = lmforge.load_model(path, dtype=variant.dtype, quantize=variant.at_load)
    if variant.quantize is not None:
        quantize_model(model, **variant.quantize)
    if variant.float_activations:
        model.float()  # the scales to float32, and with them the kernels' activations (lmforge/nn/quant.py)
    model.fuse_projections()  # a float model's only rewrite; a quantized one is fused already
    return model


def weight_megabytes(model) -> float:
    """Megabytes that decoding one token reads: every tensor of the blocks, the final norm and the head
    (the embedding is a lookup of one row)."""
    tensors = {}
    for part in (model.blocks, model.norm, model.lm_head):
        for t in [*part.parameters(), *part.buffers()]:
            tensors[t.data_ptr()] = t.numel() * t.element_size()
    return sum(tensors.values()) / 1e6


@torch.no_grad()
def score_text(model, ids: list[int], chunk: int = 256) -> tuple[float, torch.Tensor]:
    """Perplexity of ids[1:] given what precedes each, in one pass; and the argmax next token per position."""
    x = torch.tensor([ids])
    hidden = model.hidden(x)[0]  # (T, d_model)
    nll, predictions = 0.0, []
    for start in range(0, len(ids) - 1, chunk):
        logits = model.lm_head(hidden[start : min(start + chunk, len(ids) - 1)]).float()  # (chunk, vocab)
        targets = x[0, start + 1 : start + 1 + logits.shape[0]]
        nll += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        predictions.append(logits.argmax(-1))
    return math.exp(nll / (len(ids) - 1)), torch.cat(predictions)


def replies(model, tok) -> list[str]:
    """Greedy replies to CHAT_PROMPTS."""
    import lmforge

    return [
        lmforge.generate(model, tok, p, max_new_tokens=REPLY_TOKENS, temperature=0.0, chat=True)
        for p in CHAT_PROMPTS
    ]


def quality(path, tok, names) -> dict:
    """Per variant: perplexity, top-1 agreement with float32, greedy replies, weight megabytes."""
    from bench.__main__ import say

    ids = tok.encode(TEXT.read_text())
    rows, reference = {}, None
    for name in names:
        model = load_variant(path, name)
        ppl, predictions = score_text(model, ids)
        reference = predictions if reference is None else reference
        rows[name] = {
            "perplexity": ppl,
            "top1_agreement": (predictions == reference).float().mean().item(),
            "weight_mb": weight_megabytes(model),
            "replies": replies(model, tok),
        }
        say(f"{name}: perplexity {ppl:.3f}, top-1 agreement {rows[name]['top1_agreement']:.2%}")
    return {"text_tokens": len(ids), "rows": rows}


def speed(path, tok, names, *, warmup: int, repeats: int) -> dict:
    """Per variant: median batch-1 decode tokens/s and time to first token, in interleaved rounds."""
    from bench.generate import lmforge_run
    from bench.timing import interleave
    from lmforge.tokenizers.chat import encode_chat

    prompt = encode_chat(tok, [{"role": "user", "content": SPEED_PROMPT}], add_generation_prompt=True)
    models = {name: load_variant(path, name) for name in names}
    result = interleave(
        {n: (lambda m=m: lmforge_run(m, [prompt], NEW_TOKENS)[0]) for n, m in models.items()},
        warmup=warmup,
        repeats=repeats,
        label="decode SmolLM2 variants",
    )
    return {
        "prompt_tokens": len(prompt),
        "new_tokens": NEW_TOKENS,
        "runs": repeats,
        "rows": {n: r["median"] for n, r in result.items()},
    }


def run(*, quick: bool, parts=("quality", "speed"), names=None) -> dict:
    """Machine, then quality and speed of the variants `names` (None: every variant, or with `quick` the
    main ones; `quick` takes fewer rounds)."""
    from bench import machine
    from bench.__main__ import _quiet_libraries, say
    from bench.gguf import NOT_INSTALLED, smollm2_path
    from lmforge import load_tokenizer

    _quiet_libraries()
    path = smollm2_path()
    if path is None:
        return {"skipped": NOT_INSTALLED}
    tok = load_tokenizer(path)
    names = names or (MAIN if quick else tuple(VARIANTS))
    results = {"machine": machine.describe(), "file": path.name}
    say(f"quantized decode on {machine_line(results['machine'])}")
    if "quality" in parts:
        results["quality"] = quality(path, tok, names)
    if "speed" in parts:
        results["speed"] = speed(path, tok, names, warmup=1, repeats=3 if quick else 5)
        for name, row in results["speed"]["rows"].items():
            say(f"{name}: {row['decode_tokens_per_s']:.1f} tokens/s, first token {row['ttft_ms']:.0f} ms")
    return results


def machine_line(m: dict) -> str:
    """The CPU, its cores and torch threads, and the flags that decide bf16 and int8 speed."""
    flags = ", ".join(f"{f} {'yes' if m['flags'][f] else 'no'}" for f in ("avx512_bf16", "amx_bf16"))
    return f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {flags}; torch {m['torch']}"


def markdown(results: dict) -> str:
    """The section: a table of quality and speed per variant, then the greedy replies side by side."""
    if "skipped" in results:
        return f"## Quantized decoding (SmolLM2-135M)\n\nNot measured: {results['skipped']}.\n"
    quality_rows = results.get("quality", {}).get("rows", {})
    speed_rows = results.get("speed", {}).get("rows", {})
    lines = ["## Quantized decoding (SmolLM2-135M)", "", _conditions(results), ""]
    lines += [
        "| variant | MB read per token | perplexity | vs float32 | top-1 agreement | decode tokens/s | vs float32 "
        "| first token ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in [n for n in VARIANTS if n in quality_rows or n in speed_rows]:
        cells = [name, *_quality_cells(quality_rows, name), *_speed_cells(speed_rows, name)]
        lines.append("| " + " | ".join(cells) + " |")
    if quality_rows:
        lines += ["", f"Greedy replies (chat template, up to {REPLY_TOKENS} tokens):", ""]
    for i, prompt in enumerate(CHAT_PROMPTS if quality_rows else ()):
        lines += [f"**{prompt}**", "", "| variant | reply |", "|---|---|"]
        for name in [n for n in MAIN if n in quality_rows]:
            reply = " ".join(quality_rows[name]["replies"][i].split()).replace("|", "\\|")
            lines.append(f"| {name} | {reply} |")
        lines.append("")
    return "\n".join(lines)


def _conditions(results: dict) -> str:
    text = f"{machine_line(results['machine'])}, {results['machine']['date']}. {results['file']}"
    text += (
        ", every variant fused for decoding as the CLI runs it (float32 included); int8 and int4 loaded "
        "as `--quantize` loads them (int4 from the file's Q4_1 codes), the variants in parentheses "
        "re-quantized from the loaded float model by `quantize_model`"
    )
    if "quality" in results:
        text += f"; perplexity over {results['quality']['text_tokens']:,} tokens of bench/quant_text.txt"
    if "speed" in results:
        s = results["speed"]
        text += (
            f"; decode: batch 1, greedy, {s['new_tokens']} new tokens after a {s['prompt_tokens']}-token "
            f"chat prompt, median of {s['runs']} interleaved rounds"
        )
    return text + "."


def _quality_cells(rows: dict, name: str) -> list[str]:
    if name not in rows:
        return ["-"] * 4
    q, base = rows[name], rows["float32"]["perplexity"]
    return [
        f"{q['weight_mb']:.0f}",
        f"{q['perplexity']:.3f}",
        f"{q['perplexity'] / base - 1:+.2%}",
        f"{q['top1_agreement']:.2%}",
    ]


def _speed_cells(rows: dict, name: str) -> list[str]:
    if name not in rows:
        return ["-"] * 3
    rate, base = rows[name]["decode_tokens_per_s"], rows["float32"]["decode_tokens_per_s"]
    return [f"{rate:.1f}", f"{rate / base:.2f}x", f"{rows[name]['ttft_ms']:.0f}"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.quant", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="float32, bfloat16, int8 and int4 only, 3 rounds"
    )
    parser.add_argument("--only", choices=("quality", "speed"), help="measure one of the two parts")
    parser.add_argument("--variants", help="comma-separated variant names (float32 first), instead of all")
    parser.add_argument("--out", type=Path, help="also write quant.md and quant.json into this folder")
    args = parser.parse_args(argv)
    names = tuple(args.variants.split(",")) if args.variants else None
    if names and (names[0] != "float32" or not set(names) <= set(VARIANTS)):
        parser.error(f"--variants: float32 first, then any of: {', '.join(VARIANTS)}")
    results = run(quick=args.quick, parts=(args.only,) if args.only else ("quality", "speed"), names=names)
    text = markdown(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "quant.md").write_text(text + "\n")
        (args.out / "quant.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
