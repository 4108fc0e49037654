"""Generation speed: greedy decoding with lmforge's `generate_ids` against `transformers`' `generate`
(KV cache on), on the same weights: the lmforge model is saved as a Hugging Face checkpoint and
loaded by transformers, then fused for inference as the generate verb does (`fuse_projections`).

Both sides generate exactly `new_tokens` tokens per row: lmforge is given no EOS ids, transformers
`min_new_tokens`. Time to first token (TTFT) is the prefill plus the first token; decode tokens/s
counts the tokens after the first, over the time after the first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bench.timing import interleave, ratio
from bench.train import same_weight_pair
from lmforge.inference import GenerationConfig, generate_ids
from lmforge.models import get_preset

METRICS = ("decode_tokens_per_s", "ttft_ms", "tokens_per_s")


@dataclass(frozen=True)
class GenerateCase:
    shape: str  # an lmforge preset name
    precision: str  # float32 or bfloat16 (the weights are converted)
    batch_size: int
    prompt_len: int  # the longest prompt; with a batch, lengths spread from half of it up to it
    new_tokens: int
    device: str = "cpu"  # "cuda" for the GPU section (bench/gpu.py)


def prompts_for(case: GenerateCase, vocab_size: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.linspace(case.prompt_len // 2, case.prompt_len, case.batch_size).round().long()
    if case.batch_size == 1:
        lengths = [case.prompt_len]
    return [torch.randint(0, vocab_size, (int(n),), generator=generator).tolist() for n in lengths]


def _metrics(batch_size: int, new_tokens: int, first: float, total: float) -> dict:
    return {
        "decode_tokens_per_s": batch_size * (new_tokens - 1) / max(total - first, 1e-9),
        "ttft_ms": 1000 * first,
        "tokens_per_s": batch_size * new_tokens / total,
    }


def lmforge_run(
    model, prompts: list[list[int]], new_tokens: int, *, use_compile: bool | None = None
) -> tuple[dict, list[list[int]]]:
    """Greedy, exactly new_tokens tokens per row; use_compile as GenerationConfig takes it."""
    config = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, use_compile=use_compile)
    out: list[list[int]] = [[] for _ in prompts]
    start, first = time.perf_counter(), None
    for step in generate_ids(model, prompts, config, eos_token_ids=frozenset(), pad_token_id=0):
        first = first or time.perf_counter() - start
        for row, token in zip(out, step):
            row.append(token)
    total = time.perf_counter() - start
    return _metrics(len(prompts), new_tokens, first, total), out


class _FirstTokenClock:
    """A transformers streamer that notes when the first generated token arrives (the first `put`
    is the prompt)."""

    def __init__(self, start: float):
        self.start, self.puts, self.first = start, 0, None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter() - self.start

    def end(self) -> None:
        pass


def transformers_run(model, prompts: list[list[int]], new_tokens: int) -> tuple[dict, list[list[int]]]:
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])  # left padding, as for decoding
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    ids, mask = ids.to(model.device), mask.to(model.device)
    start = time.perf_counter()
    clock = _FirstTokenClock(start)
    generated = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
        streamer=clock,
    )
    total = time.perf_counter() - start
    return _metrics(len(prompts), new_tokens, clock.first, total), generated[:, longest:].tolist()


def run_case(case: GenerateCase, *, warmup: int, repeats: int) -> dict:
    """Decode tokens/s and TTFT of both sides for one shape, precision and batch."""
    base = get_preset(case.shape)
    config = get_preset(case.shape, max_seq_len=max(base.max_seq_len, case.prompt_len + case.new_tokens))
    dtype = torch.bfloat16 if case.precision == "bfloat16" else torch.float32
    models = [m.to(case.device, dtype).eval() for m in same_weight_pair(config)]
    # As `lmforge generate` runs it: q/k/v (and gate/up) in one layer each, large float32 layers faster
    # on one row (lmforge/nn/fuse.py); transformers' GPT-2 has its q/k/v in one layer already.
    models[0].fuse_projections()
    prompts = prompts_for(case, config.vocab_size)
    outputs: dict[str, list[list[int]]] = {}
    sides = {}
    for side, model, run in zip(("lmforge", "transformers"), models, (lmforge_run, transformers_run)):

        def measure(side=side, model=model, run=run) -> dict:
            metrics, outputs[side] = run(model, prompts, case.new_tokens)
            return metrics

        sides[side] = measure
    label = f"generate {case.shape} {case.precision} batch {case.batch_size}"
    result = interleave(sides, warmup=warmup, repeats=repeats, label=label)
    pairs = [(a, b) for x, y in zip(outputs["lmforge"], outputs["transformers"]) for a, b in zip(x, y)]
    row = {
        **{k: getattr(case, k) for k in ("shape", "precision", "batch_size", "new_tokens", "device")},
        "prompt_lens": sorted({len(p) for p in prompts}),
        # What one token of decoding reads at least: every weight once (a tied head counted once).
        "weight_bytes": sum(p.numel() * p.element_size() for p in models[0].parameters()),
        "runs": repeats,
        # Random weights make near-ties common, so a few greedy tokens may differ by rounding alone.
        "greedy_agreement": sum(a == b for a, b in pairs) / len(pairs),
        "generated_tokens": {side: sum(map(len, out)) for side, out in outputs.items()},
    }
    for side in sides:
        row[side] = {m: result[side]["median"][m] for m in METRICS}
    row["ratio"] = {m: ratio(row["lmforge"][m], row["transformers"][m]) for m in METRICS}
    return row
