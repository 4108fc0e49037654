"""Task heads on a pretrained encoder or decoder, as in the BERT paper (Devlin et al., 2019, section 4):
sequence classification reads one vector per sequence, extractive question answering (SQuAD) scores
every token as the start and the end of the answer span.

Which vector a classifier reads depends on the base: BERT's pooler output (tanh(dense) of [CLS]),
or, for a decoder (GPT-2, Llama), the hidden state of the last token that is not padding, the only
one that has seen the whole sequence. The base keeps its own module names under `base.`; the head
replaces a decoder's language-model head. As `lm_head` gives logits over the vocabulary, `label_head`
gives them over the labels and `span_head` over answer starts and ends. Layouts match transformers'
`*ForSequenceClassification` and `BertForQuestionAnswering`, so checkpoints convert by a key map
(lmforge/hf/keys.py: `label_head` is their `classifier` or `score`, `span_head` their `qa_outputs`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models.base import PretrainedModel
from lmforge.models.bert import Bert


@dataclass
class ClassifierConfig:
    """How many classes a classifier has, and their names (id2label[i] names logit i)."""

    num_labels: int | None = None  # len(id2label), or 2, when None
    id2label: dict[int, str] | None = None  # LABEL_0, LABEL_1, ... when None
    label2id: dict[str, int] | None = None  # the inverse of id2label when None

    def __post_init__(self):
        if self.num_labels is None:
            self.num_labels = len(self.id2label) if self.id2label else 2
        if self.num_labels < 1:
            raise LmforgeError(f"num_labels must be at least 1, got {self.num_labels}")
        if self.id2label is None:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        self.id2label = {int(i): str(name) for i, name in self.id2label.items()}
        if sorted(self.id2label) != list(range(self.num_labels)):
            raise LmforgeError(
                f"id2label must name the labels 0..{self.num_labels - 1} exactly once, got ids "
                f"{sorted(self.id2label)}; pass one name per label"
            )
        if self.label2id is None:
            self.label2id = {name: i for i, name in self.id2label.items()}


def _new_linear(d_in: int, d_out: int, *, bias: bool) -> nn.Linear:
    """A freshly initialised layer, as BERT and GPT-2 initialise theirs: N(0, 0.02), zero bias."""
    layer = nn.Linear(d_in, d_out, bias=bias)
    nn.init.normal_(layer.weight, mean=0.0, std=0.02)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def _prepare_base(base: nn.Module, *, use_pooler: bool) -> nn.Module:
    """Strip the language-model head; give a BERT base a pooler exactly when the head reads one."""
    if isinstance(base, Bert):
        base.config = dataclasses.replace(base.config, use_pooler=use_pooler, use_mlm_head=False)
        base.lm_head = None
        if use_pooler and base.pooler is None:
            base.pooler = _new_linear(base.config.d_model, base.config.d_model, bias=True)
        elif not use_pooler:
            base.pooler = None
    elif hasattr(base, "hidden") and hasattr(base, "lm_head"):
        base.lm_head = None  # the task head replaces it; a tied one was only an alias of `embed`
    else:
        raise LmforgeError(f"task heads need a BERT, GPT-2 or Llama base model, got {type(base).__name__}")
    return base


class TaskModel(PretrainedModel):
    """What both heads share: the base model under `base`, and its config as `config`."""

    task: ClassVar[str]
    is_encoder_decoder = False

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.config = base.config  # the family's config: what checkpoints convert by

    @property
    def is_encoder(self) -> bool:
        return isinstance(self.base, Bert)


class SequenceClassifier(TaskModel):
    """Logits (B, num_labels) for a batch of sequences (or pairs, with token_type_ids for BERT)."""

    task = "classification"

    def __init__(self, base: nn.Module, labels: ClassifierConfig):
        base = _prepare_base(base, use_pooler=isinstance(base, Bert))
        super().__init__(base)
        self.labels = labels
        d_model, n = base.config.d_model, labels.num_labels
        if self.is_encoder:  # BERT: dropout, then a linear layer with a bias, on the pooled [CLS]
            self.dropout = nn.Dropout(base.config.dropout)
        self.label_head = _new_linear(d_model, n, bias=self.is_encoder)  # decoders' has no bias

    @classmethod
    def from_base(
        cls,
        base: nn.Module,
        *,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
    ) -> SequenceClassifier:
        """A new, randomly initialised classification head on `base` (ready to fine-tune)."""
        return cls(base, ClassifierConfig(num_labels, id2label, label2id))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, num_labels); attention_mask (B, T) is 1 for real tokens."""
        if self.is_encoder:
            pooled = self.base.pooled(input_ids, attention_mask, token_type_ids)
            return self.label_head(self.dropout(pooled))
        x = self.base.hidden(input_ids, attention_mask=attention_mask)
        return self.label_head(x[torch.arange(len(x), device=x.device), self.last_token(input_ids)])

    def last_token(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The index (B,) of each row's last token that is not pad_token_id (rows are right-padded)."""
        B, T = input_ids.shape
        pad_id = self.config.pad_token_id
        if pad_id is None:
            if B > 1:
                raise LmforgeError(
                    "a decoder classifier needs pad_token_id in its config to find the last token "
                    "of each padded row; set config.pad_token_id (e.g. to the eos id)"
                )
            return torch.full((B,), T - 1, device=input_ids.device)
        # NOTE: as transformers: the rightmost non-pad position, so a pad id inside the text is skipped.
        positions = torch.arange(T, device=input_ids.device)
        return (positions * input_ids.ne(pad_id)).argmax(-1)


class SpanQA(TaskModel):
    """Extractive question answering: start and end logits (B, T) over the tokens of each row."""

    task = "span_qa"

    def __init__(self, base: nn.Module):
        if not isinstance(base, Bert):
            raise LmforgeError(f"span QA needs a BERT base model, got {type(base).__name__}")
        super().__init__(_prepare_base(base, use_pooler=False))
        self.span_head = _new_linear(base.config.d_model, 2, bias=True)  # start and end logits

    @classmethod
    def from_base(cls, base: nn.Module) -> SpanQA:
        """A new, randomly initialised span head on `base` (ready to fine-tune)."""
        return cls(base)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(start_logits, end_logits), each (B, T)."""
        logits = self.span_head(self.base.hidden(input_ids, attention_mask, token_type_ids))  # (B, T, 2)
        start, end = logits.unbind(dim=-1)
        return start.contiguous(), end.contiguous()


TASK_MODELS = {cls.task: cls for cls in (SequenceClassifier, SpanQA)}
