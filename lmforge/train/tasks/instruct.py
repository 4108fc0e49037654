"""`--task instruct`: instruction tuning of a decoder (GPT-2, Llama) on Alpaca or chat JSON Lines, with
the loss on the assistant's replies only (Ouyang et al. 2022; lmforge/data/tasks/instruct.py).

Each conversation is rendered with the tokenizer's chat template (the default one is stored on the
tokenizer when it has none, and saved with the model); prompt tokens are labelled IGNORE_INDEX, so the
causal loss counts reply tokens alone. The validation score generates greedily from each conversation's
prompt (everything before its last reply) and compares the text with that reply: ROUGE-1/2/L and BLEU
(eval/metrics.py). The built-in data is `stdlib-instruct`: summarise a standard-library function in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.train.loop import MAX_SIZE
from lmforge.train.loss import IGNORE_INDEX, causal_lm_loss
from lmforge.train.tasks.base import FinetuneTask, TaskOptions


@dataclass
class InstructOptions(TaskOptions):
    """`--task instruct`'s flags."""

    max_target_length: int = option(
        64,
        "seq2seq and instruct: tokens per target, end-of-sequence included (seq2seq), and the most "
        "generated for each reply scored at validation (both)",
        ge=1,
        le=MAX_SIZE,
    )


class InstructTask(FinetuneTask):
    name = "instruct"
    options = InstructOptions
    builtin = "stdlib-instruct"
    metrics = ("val_loss", "rougeL", "rouge1", "rouge2", "bleu")
    lower_is_better = frozenset({"val_loss"})
    suffixes = (".jsonl", ".json")
    is_token_loss = True

    def read(self, path: Path) -> list:
        from lmforge.data.tasks import read_instructions

        return read_instructions(path)

    def build_model(self, tokenizer, train: list):
        from lmforge.data.tasks import ensure_chat_template

        ensure_chat_template(tokenizer)  # saved with every checkpoint, so the model keeps its format
        return _decoder(self.config.model, self.config.allow_nonfinite)

    def load_trained(self, tokenizer, device: torch.device):
        from lmforge.data.tasks import ensure_chat_template

        ensure_chat_template(tokenizer)
        return _decoder(self.config.model, self.config.allow_nonfinite).to(device)

    def encode(self, tokenizer, examples: Sequence, *, training: bool) -> list[dict]:
        return reply_features(tokenizer, examples, self.config.max_length)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return causal_lm_loss(model, batch)

    def score(self, model, tokenizer, examples: Sequence, features: list[dict]) -> dict:
        return score_replies(model, tokenizer, examples, self.config)

    def describe(self, train: list, validation: list) -> str:
        return f"{len(train):,} conversations (loss on the replies only); validating on {len(validation):,}"


def reply_features(tokenizer, conversations: Sequence, max_length: int) -> list[dict]:
    """Rows of next-token targets: input_ids[:-1] predict labels[1:] (prompt positions ignored)."""
    from lmforge.data.tasks import encode_instructions

    rows = encode_instructions(tokenizer, conversations, max_length=max_length + 1)
    return [
        {
            "input_ids": r["input_ids"][:-1],
            "attention_mask": r["attention_mask"][:-1],
            "labels": r["labels"][1:],
        }
        for r in rows
        if any(label != IGNORE_INDEX for label in r["labels"][1:])
    ]


def score_replies(model, tokenizer, conversations: Sequence, config) -> dict:
    """ROUGE and BLEU of the greedy reply to each conversation's prompt against its last reply."""
    from lmforge.eval.metrics import compute_metrics

    prompts, references = zip(*(prompt_and_reply(tokenizer, e) for e in conversations))
    replies = complete(model, tokenizer, prompts, config)
    return compute_metrics("seq2seq", replies, list(references))


def is_causal_lm(model) -> bool:
    """A decoder-only language model (GPT-2, Llama) with its LM head: one that can learn to reply."""
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    return kind in ("gpt2", "llama") and getattr(model, "lm_head", None) is not None


def _decoder(path: str, allow_nonfinite: bool):
    from lmforge.hf import load_model

    model = load_model(path, allow_nonfinite=allow_nonfinite)
    if not is_causal_lm(model):
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise LmforgeError(
            f"{path} is a {kind} model, which cannot be instruction-tuned; use a GPT-2 or Llama "
            "checkpoint (T5 models take --task seq2seq)"
        )
    return model


def prompt_and_reply(tokenizer, conversation) -> tuple[list[int], str]:
    """(prompt ids: the conversation up to its last reply, with the generation prompt; that reply's text).
    Only the template writes special tokens: the messages' text is encoded as text (tokenizers/chat.py)."""
    from lmforge.tokenizers.chat import encode_chat

    messages = list(conversation.messages)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = encode_chat(tokenizer, messages[:last], add_generation_prompt=True)
    return prompt, messages[last]["content"]


def complete(model, tokenizer, prompts: Sequence[list[int]], config) -> list[str]:
    """Greedy replies to prompt ids (batched; a prompt too long is cut in its middle, as in training)."""
    from lmforge.data.tasks.instruct import fit_prompt
    from lmforge.inference.texts import generate_texts

    new = config.max_target_length
    room = model.config.max_seq_len - new
    if room < 1:
        raise LmforgeError(
            f"--max-target-length {new} leaves no room for a prompt in the model's {model.config.max_seq_len} "
            "tokens; pass a smaller --max-target-length"
        )
    prompts = [fit_prompt(p, room) for p in prompts]
    return generate_texts(model, tokenizer, prompts, max_new_tokens=new, batch_size=config.batch_size)
