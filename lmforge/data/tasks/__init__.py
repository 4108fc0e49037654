"""Fine-tuning data: each task reads its files into examples, then encodes them into feature rows.

- classification.py: CSV / JSON Lines text (or text pair) + label, and the label map.
- squad.py: extractive QA on SQuAD v1.1 / v2.0 JSON, windowed contexts, answer spans, post-processing.
- seq2seq.py: JSON Lines source -> target (T5-style task prefixes).
- instruct.py: instruction tuning on Alpaca or chat JSON Lines, rendered with a chat template, loss on replies.
- builtin.py: tasks made from the Python standard library (no download).
- features.py: padding feature rows into (B, T) tensors.
"""

from lmforge.data.tasks.builtin import TASKS as BUILTIN_TASKS
from lmforge.data.tasks.builtin import baseline_predictions, build_task, heldout_corpus_files, write_task
from lmforge.data.tasks.classification import (
    ClassificationExample,
    LabelMap,
    encode_classification,
    read_classification,
)
from lmforge.data.tasks.features import pad_batch
from lmforge.data.tasks.instruct import (
    DEFAULT_CHAT_TEMPLATE,
    Conversation,
    encode_conversation,
    encode_instructions,
    ensure_chat_template,
    read_instructions,
    render_chat,
)
from lmforge.data.tasks.seq2seq import Seq2SeqExample, encode_seq2seq, read_seq2seq
from lmforge.data.tasks.squad import (
    SquadAnswer,
    SquadExample,
    SquadWindow,
    answer_token_span,
    postprocess_squad,
    prepare_squad_eval,
    prepare_squad_train,
    read_questions,
    read_squad,
)

__all__ = [
    "BUILTIN_TASKS",
    "DEFAULT_CHAT_TEMPLATE",
    "ClassificationExample",
    "Conversation",
    "LabelMap",
    "Seq2SeqExample",
    "SquadAnswer",
    "SquadExample",
    "SquadWindow",
    "answer_token_span",
    "baseline_predictions",
    "build_task",
    "encode_classification",
    "encode_conversation",
    "encode_instructions",
    "encode_seq2seq",
    "ensure_chat_template",
    "heldout_corpus_files",
    "pad_batch",
    "postprocess_squad",
    "prepare_squad_eval",
    "prepare_squad_train",
    "read_classification",
    "read_instructions",
    "read_questions",
    "read_seq2seq",
    "read_squad",
    "render_chat",
    "write_task",
]
