"""Texts from many prompts at once, deterministically (greedy, or beam search): the decoder every task's
evaluation runs, for seq2seq targets, instruct replies and the span-corruption sample of pretraining.

It is `generate_ids` (lmforge/inference/generate.py) in batches: prompts of similar length share a
batch, so that little of it is padding, and each row's ids become one text at the end, decoded whole.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmforge.inference.generate import GenerationConfig, eos_token_ids_of, generate_ids
from lmforge.models.base import evaluating


def generate_texts(
    model,
    tok,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    num_beams: int = 1,
    skip_special_tokens: bool = True,
) -> list[str]:
    """The text generated from each prompt (token ids; for an encoder-decoder, the encoder's input), in
    order, without surrounding whitespace and without the end-of-sequence token that ended it.

    skip_special_tokens=False keeps tokens such as T5's <extra_id_0> sentinels in the text.
    """
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0, num_beams=num_beams)
    eos = eos_token_ids_of(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [""] * len(prompts)
    with evaluating(model):
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            ids: list[list[int]] = [[] for _ in rows]
            for step in generate_ids(
                model, [prompts[i] for i in rows], config, eos_token_ids=eos, pad_token_id=pad
            ):
                for row, token in enumerate(step):
                    if token is not None and token not in eos:
                        ids[row].append(token)
            for i, row_ids in zip(rows, ids):
                texts[i] = tok.decode(row_ids, skip_special_tokens=skip_special_tokens).strip()
    return texts
