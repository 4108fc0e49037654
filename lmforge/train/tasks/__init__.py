"""Fine-tuning tasks (`lmforge finetune --task NAME`): each module holds one task's options (its flags), data
reading, model, loss and metrics (see base.py); lmforge/train/finetune.py runs any of them on the one
training loop."""

from __future__ import annotations

from lmforge.errors import LmforgeError
from lmforge.train.tasks.base import FinetuneTask, TaskOptions
from lmforge.train.tasks.classification import ClassificationOptions, ClassificationTask
from lmforge.train.tasks.instruct import InstructOptions, InstructTask
from lmforge.train.tasks.qa import QAOptions, QATask
from lmforge.train.tasks.seq2seq import Seq2SeqOptions, Seq2SeqTask

# --task name -> the task
TASKS: dict[str, type[FinetuneTask]] = {
    task.name: task for task in (ClassificationTask, InstructTask, QATask, Seq2SeqTask)
}


def get_task(name: str) -> type[FinetuneTask]:
    """The task class for a --task name."""
    if name not in TASKS:
        raise LmforgeError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = [
    "TASKS",
    "ClassificationOptions",
    "ClassificationTask",
    "FinetuneTask",
    "InstructOptions",
    "InstructTask",
    "QAOptions",
    "QATask",
    "Seq2SeqOptions",
    "Seq2SeqTask",
    "TaskOptions",
    "get_task",
]
