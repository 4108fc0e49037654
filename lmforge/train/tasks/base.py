"""What a fine-tuning task tells the one training loop: how to read its data, which model it trains,
its loss, and the metrics its validation set is judged by.

`lmforge.train.finetune` does the rest for every task alike: data files (or the task's built-in data),
batches, LoRA, the loop, the best checkpoint by `--metric`, early stopping and the final metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from lmforge.errors import LmforgeError


class FinetuneTask:
    """One task. Subclasses set the class attributes and implement the methods that raise here."""

    name: ClassVar[str]  # the --task value
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

    def load_trained(self, tokenizer) -> torch.nn.Module:
        """The fine-tuned model at `config.model`, checked to be one this task made."""
        raise NotImplementedError

    def evaluate(self, data: Path) -> dict[str, Any]:
        """The task's metrics of the fine-tuned model `config.model` on a labelled data file."""
        from lmforge.device import check_device
        from lmforge.tokenizers import load_tokenizer

        device = check_device(self.config.device)  # before anything is loaded
        tokenizer = load_tokenizer(self.config.model)
        model = self.load_trained(tokenizer).to(device)
        examples = self.read(data)
        return self.score(model, tokenizer, examples, self.encode(tokenizer, examples, training=False))

    def fingerprint(self) -> dict[str, Any]:
        """What must not change when resuming (besides the model and the data sizes)."""
        return {}

    def describe(self, train: list, validation: list) -> str:
        """The line printed when training starts."""
        return f"{len(train):,} training examples; validating on {len(validation):,}"
