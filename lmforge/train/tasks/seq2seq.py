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
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.train.loss import causal_lm_loss, seq2seq_loss
from lmforge.train.tasks.base import FinetuneTask
from lmforge.train.tasks.instruct import is_causal_lm, reply_features, score_replies


class Seq2SeqTask(FinetuneTask):
    name = "seq2seq"
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

    def load_trained(self, tokenizer):
        return self._model(tokenizer, "evaluated with --task seq2seq")

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

        c = self.config
        if self.decoder_only:
            return score_replies(model, tokenizer, _conversations(examples), c)
        sources = [f["input_ids"] for f in features]
        outputs = generate_targets(model, tokenizer, sources, c.max_target_length, c.batch_size)
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


@torch.no_grad()
def generate_targets(
    model, tokenizer, sources: Sequence[list[int]], max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """The greedy output text of each source (token ids), decoded in batches of similar lengths."""
    from lmforge.inference.generate import GenerationConfig, generate_ids

    eos = {i for i in (tokenizer.eos_token_id, model.config.eos_token_id) if i is not None}
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    generation = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    # Sources sorted by length pad little; the encoder masks what padding is left, so the order is no matter.
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    outputs = [""] * len(sources)
    was_training = model.training
    model.eval()
    for begin in range(0, len(order), batch_size):
        rows = order[begin : begin + batch_size]
        ids: list[list[int]] = [[] for _ in rows]
        steps = generate_ids(
            model, [sources[i] for i in rows], generation, eos_token_ids=eos, pad_token_id=pad
        )
        for step in steps:
            for row, token in enumerate(step):
                if token is not None and token not in eos:
                    ids[row].append(token)
        for row, i in enumerate(rows):
            outputs[i] = tokenizer.decode(ids[row]).strip()
    model.train(was_training)
    return outputs
