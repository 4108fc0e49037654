"""What a fine-tuning task tells the one training loop: how to read its data, which model it trains,
its loss, and the metrics its validation set is judged by.

`lmforge.train.finetune` does the rest for every task alike: data files (or the task's built-in data),
batches, LoRA, the loop, the best checkpoint by `--metric`, early stopping and the final metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.train.loop import MAX_SIZE


@dataclass
class TaskOptions:
    """How a task reads and encodes its data: its flags, their help and defaults. Each task's options
    class adds its own fields to these; `finetune` and `evaluate` take every task's (FinetuneConfig holds
    them all), `classify` and `answer` their task's, each with the one default declared here."""

    max_length: int = option(
        128,
        "tokens per example, special tokens included: a text (classification), a window (qa), "
        "a source (seq2seq) or a whole conversation (instruct)",
        ge=3,
        le=MAX_SIZE,
    )


class FinetuneTask:
    """One task. Subclasses set the class attributes and implement the methods that raise here."""

    name: ClassVar[str]  # the --task value
    options: ClassVar[type[TaskOptions]] = (
        TaskOptions  # its flags; the config it reads them from has them all
    )
    builtin: ClassVar[str | None] = None  # the built-in data (lmforge.data.tasks.builtin) used without --data
    metrics: ClassVar[tuple[str, ...]]  # what --metric may choose; the first is the default
    lower_is_better: ClassVar[frozenset[str]] = frozenset()  # metrics where smaller wins (a loss)
    suffixes: ClassVar[tuple[str, ...]] = (
        ".csv",
        ".jsonl",
        ".json",
    )  # data file types, in order of preference
    lora_targets: ClassVar[str] = "q_proj,v_proj"  # the default --lora-targets
    # The loss is a mean over predicted tokens, so exp(val_loss) is a perplexity, logged as val_ppl; a
    # per-example loss (a label, an answer span) has none.
    is_token_loss: ClassVar[bool] = False

    def __init__(self, config):
        self.config = config

    def read(self, path: Path) -> list:
        """The examples of one data file."""
        raise NotImplementedError

    def hold_out(self, train: list, path: Path) -> tuple[list, list]:
        """(train, validation) when no validation file is given: every 10th example is held out."""
        validation = train[::10]
        train = [e for i, e in enumerate(train) if i % 10]
        if not train:
            raise LmforgeError(f"{path} has too few examples to hold out a validation set; pass --validation")
        return train, validation

    def build_model(self, tokenizer, train: list) -> torch.nn.Module:
        """The model to train: the pretrained checkpoint `config.model`, with the task's head."""
        raise NotImplementedError

    def encode(self, tokenizer, examples: Sequence, *, training: bool) -> list[dict[str, Any]]:
        """Feature rows (lmforge.data.tasks.features) of the examples."""
        raise NotImplementedError

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, number of terms) of a padded batch, as the loop's loss functions return."""
        raise NotImplementedError

    def trainable_modules(self, model) -> list[str]:
        """Modules trained whole beside the LoRA adapters (a new head): PEFT's modules_to_save."""
        return []

    def score(self, model, tokenizer, examples: Sequence, features: list[dict]) -> dict[str, Any]:
        """The task's metrics of `model` on labelled examples (and their `encode(training=False)` rows)."""
        raise NotImplementedError

    def load_trained(self, tokenizer, device: torch.device) -> torch.nn.Module:
        """The fine-tuned model at `config.model` on `device`, checked to be one this task made."""
        raise NotImplementedError

    def check_examples(self, examples: Sequence, path: Path) -> None:
        """Refuse labelled examples the loaded fine-tuned model cannot be scored on (a label it lacks)."""

    def evaluate(self, data: Path) -> dict[str, Any]:
        """The task's metrics of the fine-tuned model `config.model` on a labelled data file."""
        from lmforge.device import check_device
        from lmforge.tokenizers import load_tokenizer

        device = check_device(self.config.device)  # before anything is loaded
        tokenizer = load_tokenizer(self.config.model)
        model = self.load_trained(tokenizer, device)
        examples = self.read(data)
        self.check_examples(examples, data)
        return self.score(model, tokenizer, examples, self.encode(tokenizer, examples, training=False))

    def fingerprint(self) -> dict[str, Any]:
        """What must not change when resuming (besides the model and the data sizes)."""
        return {}

    def describe(self, train: list, validation: list) -> str:
        """The line printed when training starts."""
        return f"{len(train):,} training examples; validating on {len(validation):,}"
