"""`--task seq2seq`: a pretrained encoder-decoder (T5) fine-tuned to map a source text to a target text,
summarisation or translation told apart by a task prefix on the source (Raffel et al. 2020, section 2.4).

Data: JSON Lines of source and target (lmforge/data/tasks/seq2seq.py; `--source-prefix "summarize: "`), or
the built-in `stdlib-docstring` task: a standard-library function's code -> the first line of its docstring.
The loss is the decoder's token cross-entropy under teacher forcing (lmforge.train.loss.seq2seq_loss). The
validation score decodes greedily from every source (batched, `--max-target-length` tokens at most) and
compares the texts with the targets: ROUGE-1/2/L and BLEU (eval/metrics.py). The fine-tuned model is a
plain T5 checkpoint: `lmforge generate --model OUT --prompt SOURCE --temperature 0` runs it on new input.

A decoder-only checkpoint (GPT-2, Llama) learns the same pairs as prompt and completion: each pair is a
two-turn conversation under the tokenizer's chat template (the source as the user's turn, the target as
the reply), trained and scored exactly as `--task instruct` (lmforge/train/tasks/instruct.py): the loss
on the target tokens only, greedy completions of the prompt at validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.train.loss import causal_lm_loss, seq2seq_loss
from lmforge.train.tasks.base import FinetuneTask
from lmforge.train.tasks.instruct import InstructOptions, is_causal_lm, reply_features, score_replies


@dataclass
class Seq2SeqOptions(InstructOptions):
    """`--task seq2seq`'s flags: instruct's (a decoder-only model learns the pairs as instruct does), and
    where the pairs are."""

    source_field: str = option("source", "seq2seq: the JSON field holding the input text")
    target_field: str = option("target", "seq2seq: the JSON field holding the output text")
    source_prefix: str = option(
        "", 'seq2seq: text put before every source, as T5 does ("summarize: "; default: none)'
    )


class Seq2SeqTask(FinetuneTask):
    name = "seq2seq"
    options = Seq2SeqOptions
    builtin = "stdlib-docstring"
    metrics = ("rougeL", "rouge1", "rouge2", "bleu", "val_loss")
    lower_is_better = frozenset({"val_loss"})
    suffixes = (".jsonl", ".json")
    is_token_loss = True
    max_seq_len: int | None = None  # the model's, once it is loaded: generation refuses longer sources
    decoder_only = False  # a GPT-2 or Llama, trained on prompt + completion; known once the model is loaded

    def read(self, path: Path) -> list:
        from lmforge.data.tasks import read_seq2seq

        c = self.config
        return read_seq2seq(
            path, source_field=c.source_field, target_field=c.target_field, prefix=c.source_prefix
        )

    def build_model(self, tokenizer, train: list):
        return self._model(tokenizer, "fine-tuned for seq2seq")

    def load_trained(self, tokenizer, device: torch.device):
        return self._model(tokenizer, "evaluated with --task seq2seq").to(device)

    def _model(self, tokenizer, what: str):
        from lmforge.data.tasks import ensure_chat_template
        from lmforge.hf import load_model

        path = self.config.model
        model = load_model(path, allow_nonfinite=self.config.allow_nonfinite)
        self.decoder_only = is_causal_lm(model)
        if not (self.decoder_only or getattr(model, "is_encoder_decoder", False)):
            kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            raise LmforgeError(
                f"{path} is a {kind} model, which cannot be {what}: seq2seq needs a T5 (encoder-decoder) "
                "or a GPT-2 / Llama (decoder-only) checkpoint"
            )
        if self.decoder_only:
            ensure_chat_template(tokenizer)  # saved with the model: it is how the prompt is written
        self.max_seq_len = model.config.max_seq_len
        return model

    def encode(self, tokenizer, examples: Sequence, *, training: bool) -> list[dict]:
        """One row per example: the source's input_ids and attention_mask, the target's ids as labels."""
        from lmforge.data.tasks import encode_seq2seq

        c = self.config
        if self.decoder_only:
            return reply_features(tokenizer, _conversations(examples), c.max_length)
        max_source = min(c.max_length, self.max_seq_len or c.max_length)
        return encode_seq2seq(
            tokenizer, examples, max_source_length=max_source, max_target_length=c.max_target_length
        )

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return causal_lm_loss(model, batch) if self.decoder_only else seq2seq_loss(model, batch)

    def score(self, model, tokenizer, examples: Sequence, features: list[dict]) -> dict:
        from lmforge.eval.metrics import compute_metrics
        from lmforge.inference.texts import generate_texts

        c = self.config
        if self.decoder_only:
            return score_replies(model, tokenizer, _conversations(examples), c)
        sources = [f["input_ids"] for f in features]
        outputs = generate_texts(
            model, tokenizer, sources, max_new_tokens=c.max_target_length, batch_size=c.batch_size
        )
        return compute_metrics("seq2seq", outputs, [e.target for e in examples])

    def describe(self, train: list, validation: list) -> str:
        how = " as prompt and completion" if self.decoder_only else ""
        return f"{len(train):,} source/target pairs{how}; validating on {len(validation):,} (greedy decoding)"


def _conversations(examples: Sequence) -> list:
    """Each pair as a conversation: the source is the user's turn, the target the reply."""
    from lmforge.data.tasks.instruct import Conversation

    return [
        Conversation(
            ({"role": "user", "content": e.source}, {"role": "assistant", "content": e.target}), e.where
        )
        for e in examples
    ]
