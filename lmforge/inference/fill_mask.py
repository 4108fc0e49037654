"""Fill-mask: the most likely tokens for each mask token of a text, from a masked-LM (BERT, RoBERTa).

The masked-LM objective of BERT (Devlin et al., 2018) trains the model to predict a hidden token
from both sides of it; this is that prediction, read back:

    >>> lmforge.fill_mask(model, tok, "Paris is the [MASK] of France.", top_k=3)
    [{"score": 0.41, "token": 3007, "token_str": "capital", "sequence": "paris is the capital of france."}, ...]

The result has the shape of `transformers`' fill-mask pipeline: for a text with one mask, a list of
top_k candidates; with several masks, one such list per mask, in order (each sequence fills one mask
and shows the others). Only the mask token's text
becomes a mask: any other special token's text in the input stays text (see `encode_masked`).
"""

from __future__ import annotations

import tokenizers
import torch

from lmforge.errors import LmforgeError


def encode_masked(tok, text: str) -> list[int]:
    """Token ids of `text` with the post-processor's specials ([CLS] ... [SEP]), in which only the mask
    token's literal text becomes the mask id: the pieces between masks are encoded as plain text."""
    mask_id = tok.mask_token_id
    mask_text = tok.id_to_token(mask_id)
    added = tok.backend.get_added_tokens_decoder()[mask_id]
    pieces = text.split(mask_text)
    encodings = []
    for i, piece in enumerate(pieces):
        # The mask's lstrip/rstrip (RoBERTa's <mask> takes the space before it), as the tokenizer does.
        if i < len(pieces) - 1 and added.lstrip:
            piece = piece.rstrip()
        if i > 0 and added.rstrip:
            piece = piece.lstrip()
        if i > 0:
            encodings.append(tok.encoding(mask_text, add_special_tokens=False, allow_special=True))
        if piece:
            encodings.append(tok.encoding(piece, add_special_tokens=False, allow_special=False))
    if not encodings:
        return tok.encode("")
    merged = tokenizers.Encoding.merge(encodings, growing_offsets=True)
    return tok.backend.post_process(merged, None, add_special_tokens=True).ids


def check_masked_lm(model) -> None:
    """One line unless `model` is an encoder with a masked-LM head."""
    if getattr(model, "lm_head", None) is None or not hasattr(model, "pooled"):
        raise LmforgeError(
            f"fill-mask needs a masked-LM checkpoint (BERT or RoBERTa with its MLM head, as saved by "
            f"BertForMaskedLM); this {model.config.model_type} model has no masked-LM head"
        )


@torch.no_grad()
def fill_mask(model, tok, text: str | list[str], *, top_k: int = 5) -> list:
    """The top_k (token, probability) candidates of each mask in `text` (a string or a list of them)."""
    if isinstance(text, list):
        return [fill_mask(model, tok, t, top_k=top_k) for t in text]
    check_masked_lm(model)
    if tok.mask_token_id is None:
        raise LmforgeError("this tokenizer has no mask token, so there is nothing to fill")
    if top_k < 1:
        raise LmforgeError(f"--top-k must be at least 1, got {top_k}")
    mask_text = tok.id_to_token(tok.mask_token_id)
    ids = encode_masked(tok, text)
    positions = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
    if not positions:
        raise LmforgeError(f"the text has no {mask_text} to fill; write {mask_text} where a word is missing")
    if len(ids) > model.max_positions:
        raise LmforgeError(f"the text is {len(ids)} tokens, more than this model's {model.max_positions}")
    device = next(model.parameters()).device
    logits = model(torch.tensor([ids], device=device))[0, positions].float()  # (n_masks, vocab)
    probs = logits.softmax(-1)
    scores, tokens = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    results = []
    for n, position in enumerate(positions):
        candidates = []
        for score, token in zip(scores[n].tolist(), tokens[n].tolist()):
            filled = [*ids[:position], token, *ids[position + 1 :]]
            candidates.append(
                {
                    "score": score,
                    "token": token,
                    "token_str": tok.decode([token]),
                    # With several masks the others stay visible (and so do [CLS] / [SEP]), as in
                    # transformers' pipeline.
                    "sequence": tok.decode(filled, skip_special_tokens=len(positions) == 1),
                }
            )
        results.append(candidates)
    return results[0] if len(results) == 1 else results
