"""Training throughput: lmforge's real training step against `transformers`' GPT2LMHeadModel as its
users train it, on the same weights, data, AdamW, batch, sequence length and precision.

lmforge's step is the Trainer's: `accumulate_gradients` (sum-of-token-losses cross-entropy, backward),
global-norm clipping to 1.0, fused AdamW. The transformers step is the usual loop: `model(input_ids,
labels=input_ids).loss.backward()`, the same clipping, and the same AdamW (lmforge's `make_optimizer`,
so the optimizer is not what differs). Both run eagerly with their default attention implementation.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from bench.memory import peak_rss_mb
from bench.timing import interleave, ratio, timed
from lmforge.models import build_model, get_preset
from lmforge.train.distributed import World
from lmforge.train.loop import accumulate_gradients
from lmforge.train.loss import causal_lm_loss
from lmforge.train.optim import make_optimizer

LR = 1e-4  # small, so that many timed steps on random data never drive the weights to inf/NaN


@dataclass(frozen=True)
class TrainCase:
    shape: str  # an lmforge preset name
    batch_size: int
    seq_len: int
    precision: str  # float32 or bfloat16 (autocast)
    device: str = "cpu"  # "cuda" for the GPU section (bench/gpu.py)


def autocast_for(precision: str, device: str = "cpu"):
    """A factory of autocast contexts, as the Trainer builds it."""
    if precision == "float32":
        return nullcontext
    return lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def random_tokens(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(B, T + 1) token ids: inputs are the first T, targets the last T."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=generator)


def lmforge_step(model, optimizer, tokens: torch.Tensor, autocast) -> None:
    """One optimizer step exactly as lmforge's Trainer takes it (one micro-batch, one process)."""
    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
    accumulate_gradients(model, [batch], causal_lm_loss, World(), autocast)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def transformers_step(model, optimizer, tokens: torch.Tensor, autocast) -> None:
    """One optimizer step of the usual transformers training loop."""
    input_ids = tokens[:, :-1]
    with autocast():
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


STEPS = {"lmforge": lmforge_step, "transformers": transformers_step}


def config_for(case: TrainCase):
    base = get_preset(case.shape)
    return get_preset(case.shape, max_seq_len=max(base.max_seq_len, case.seq_len))


def build_side(side: str, config, *, seed: int = 0):
    """A freshly initialised model of `config` for one side (the memory subprocess builds this way)."""
    torch.manual_seed(seed)
    if side == "lmforge":
        return build_model(config)
    import transformers

    from lmforge.hf.config import to_hf_config

    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**to_hf_config(config)))


def same_weight_pair(config, *, seed: int = 0):
    """The lmforge model and the same weights loaded by transformers from its Hugging Face save."""
    import transformers

    transformers.logging.set_verbosity_error()
    ours = build_side("lmforge", config, seed=seed)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        ours.save_pretrained(tmp)
        theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp)
    return ours, theirs


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (forward and backward through every weight matrix) plus
    12 n_layers d_model T for attention scores and values (PaLM, appendix B). N leaves out the
    position embeddings (a lookup) but keeps the token embedding, which the tied lm_head multiplies by."""
    n = config.vocab_size * config.d_model + config.n_layers * (
        4 * config.d_model * config.d_model + 2 * config.d_model * config.d_ff
    )
    return 6 * n + 12 * config.n_layers * config.d_model * seq_len


def _step_runner(side: str, model, tokens: torch.Tensor, autocast):
    """A function taking one timed training step of `side`, with an optimizer of its own."""
    model.train()
    optimizer = make_optimizer(model, lr=LR, weight_decay=0.1)
    n_tokens = tokens.shape[0] * (tokens.shape[1] - 1)

    def step() -> None:
        STEPS[side](model, optimizer, tokens, autocast)
        if tokens.device.type == "cuda":
            torch.cuda.synchronize()  # the step's kernels done, not only queued

    def run() -> dict:
        seconds = timed(step)
        return {"seconds": seconds, "tokens_per_s": n_tokens / seconds}

    return run


def run_case(case: TrainCase, *, peak: float | None, warmup: int, repeats: int, memory_steps: int) -> dict:
    """Tokens/s, MFU (None without a `peak` FLOP/s) and (unless memory_steps is 0) peak memory of both
    sides for one shape and precision."""
    config = config_for(case)
    models = {side: m.to(case.device) for side, m in zip(STEPS, same_weight_pair(config))}
    tokens = random_tokens(config.vocab_size, case.batch_size, case.seq_len).to(case.device)
    autocast = autocast_for(case.precision, case.device)
    sides = {side: _step_runner(side, model, tokens, autocast) for side, model in models.items()}
    label = f"train {case.shape} {case.precision}"
    result = interleave(sides, warmup=warmup, repeats=repeats, label=label)
    per_token = flops_per_token(config, case.seq_len)
    row = {
        "shape": case.shape,
        "params": models["lmforge"].num_params(),
        "precision": case.precision,
        "batch_size": case.batch_size,
        "seq_len": case.seq_len,
        "flops_per_token": per_token,
        "attn_implementation": models["transformers"].config._attn_implementation,
        "runs": repeats,
        "memory_steps": memory_steps,
    }
    del models, sides  # frees both models and optimizers before the memory subprocesses run
    metrics = ("tokens_per_s", "peak_rss_mb") if memory_steps else ("tokens_per_s",)
    for side in STEPS:
        tokens_per_s = result[side]["median"]["tokens_per_s"]
        row[side] = {
            "tokens_per_s": tokens_per_s,
            "mfu": None if peak is None else per_token * tokens_per_s / peak,
            "peak_rss_mb": None,
        }
        if memory_steps:
            row[side]["peak_rss_mb"] = peak_rss_mb(side, case, steps=memory_steps)
    row["ratio"] = {m: ratio(row["lmforge"][m], row["transformers"][m]) for m in metrics}
    return row
