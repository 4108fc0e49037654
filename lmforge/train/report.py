"""What a training run tells the person watching it: the lines printed at each evaluation and at the end.

At each evaluation, one line: the training loss (the mean of the steps since the last evaluation, less
noisy than one batch's), the validation loss on held-out text, its perplexity exp(validation loss), and a
task's own metrics; the loop then prints a sample continuing the same prompt with the same seed, so that
from one evaluation to the next only the model has changed. The first evaluation says what each number
means. At the end of pretraining: where the model and its loss curve are, and where to go next.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from tqdm import tqdm

# Keys of an evaluation row shown by their own names rather than as a task metric.
_OWN = ("val_loss", "val_ppl")


class EvaluationReport:
    """Collects the training losses between evaluations and writes each evaluation's line."""

    def __init__(
        self, max_steps: int, every: int, *, vocab_size: int | None = None, sample: str | None = None
    ):
        self.max_steps, self.every, self.vocab_size, self.sample = max_steps, every, vocab_size, sample
        self._losses: list[float] = []
        self._explained = False

    @classmethod
    def of(cls, trainer) -> EvaluationReport:
        """The report of a Trainer: its schedule, its tokenizer's vocabulary, and what its sample is."""
        cfg, prompt = trainer.config, trainer.sample_prompt
        is_prompted = trainer.sample_fn is None and prompt and trainer.tokenizer and cfg.sample_tokens
        return cls(
            cfg.max_steps,
            cfg.eval_every,
            vocab_size=getattr(trainer.tokenizer, "vocab_size", None),
            sample=sample_legend(prompt, cfg.sample_tokens) if is_prompted else None,
        )

    def add(self, row: dict) -> None:
        """Count one training step's loss (a skipped, non-finite step is left out)."""
        if not row.get("skipped") and math.isfinite(row["loss"]):
            self._losses.append(row["loss"])

    def lines(self, row: dict) -> str:
        """The evaluation line of `row` (an evaluation step's metrics), after the legend the first time."""
        parts = [f"step {row['step']:,}/{self.max_steps:,}"]
        if self._losses:
            parts.append(f"train loss {sum(self._losses) / len(self._losses):.4f}")
        if "val_loss" in row:
            parts.append(f"val loss {row['val_loss']:.4f}")
        if "val_ppl" in row:
            parts.append(f"perplexity {format_perplexity(row['val_ppl'])}")
        parts += [f"{k[4:]} {v:.4g}" for k, v in row.items() if k.startswith("val_") and k not in _OWN]
        parts.append(_clock(row.get("elapsed_s", 0.0)))
        self._losses.clear()
        legend = "" if self._explained else self._legend(row) + "\n"
        self._explained = True
        return legend + "  ".join(parts)

    def _legend(self, row: dict) -> str:
        said = [
            f"at each evaluation (every {self.every:,} steps):",
            "  train loss   the mean training loss since the last evaluation",
        ]
        if "val_loss" in row:
            said.append("  val loss     the loss on held-out text, which the model never trains on")
        if "val_ppl" in row:
            untrained = f"; untrained: about {self.vocab_size:,}, the vocabulary" if self.vocab_size else ""
            said.append(
                f"  perplexity   exp(val loss): as unsure as a choice among that many tokens{untrained}"
            )
        if any(k.startswith("val_") and k not in _OWN for k in row):
            said.append("  and the task's metrics on the validation examples")
        if self.sample:
            said.append(f"  sample       {self.sample}")
        return "\n".join(said)


def progress_bar(max_steps: int, start_step: int, *, is_shown: bool) -> tqdm:
    """The bar of the training steps: the step, its rate and the time left; the loop adds loss, tokens/s, lr."""
    return tqdm(total=max_steps, initial=start_step, disable=not is_shown, unit="step", dynamic_ncols=True)


def sample_legend(prompt: str, n_tokens: int) -> str:
    """What the sample at each evaluation is, for the legend."""
    return f"{prompt!r} continued by {n_tokens} tokens, the same seed each time: only the model changes"


def format_perplexity(ppl: float) -> str:
    """153.1, 12,345 (no decimals past 10,000), inf."""
    if not math.isfinite(ppl):
        return str(ppl)
    return f"{ppl:,.0f}" if ppl >= 10_000 else f"{ppl:.1f}"


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes}:{s:02d} elapsed"


def closing_lines(out: Path, *, prompt: str | None, objective: str = "clm") -> str:
    """What to look at, try, read and run after pretraining into `out`."""
    said = []
    if (out / "loss.png").is_file():
        said.append(f"the loss curve: {out / 'loss.png'}")
    if objective == "clm":
        shown = shlex.quote(prompt) if prompt and prompt.strip() and "\n" not in prompt else "TEXT"
        said.append(f"try it: lmforge generate --model {shlex.quote(str(out))} --prompt {shown} --echo")
    said.append(
        "next: docs/tour.md (or docs/tour.zh.md), the guided tour from each idea to its code;\n"
        "      make chat, a conversation with a real model (SmolLM2-135M-Instruct)"
    )
    return "\n".join(said)
