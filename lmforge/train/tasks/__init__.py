"""Fine-tuning tasks (`lmforge finetune --task NAME`): each module holds one task's data reading, model,
loss and metrics (see base.py); lmforge/train/finetune.py runs any of them on the one training loop."""

from __future__ import annotations

import importlib

from lmforge.errors import LmforgeError

# --task name -> "module:class", imported only when the task is used
TASKS = {
    "classification": "lmforge.train.tasks.classification:ClassificationTask",
    "instruct": "lmforge.train.tasks.instruct:InstructTask",
    "qa": "lmforge.train.tasks.qa:QATask",
    "seq2seq": "lmforge.train.tasks.seq2seq:Seq2SeqTask",
}


def get_task(name: str):
    """The task class for a --task name."""
    if name not in TASKS:
        raise LmforgeError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
