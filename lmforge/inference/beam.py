"""Beam search: keep the `num_beams` most probable partial sequences per prompt, not just one.

A finished hypothesis (one that emits EOS, or reaches the token limit) is scored by its summed
log-probability divided by generated_length ** length_penalty (Wu et al., 2016, in the simple form
Hugging Face uses). The semantics are those of `transformers` `generate(num_beams=N, do_sample=False,
early_stopping=False)`, so both libraries return the same tokens:
- every step ranks the (beam, token) candidates of a prompt by cumulative log-probability and takes
  the top K = max(2, 1 + number of EOS ids) * N, so that N candidates that go on always remain;
- a candidate ending in EOS among the top N of those K becomes a finished hypothesis (its length
  counts the EOS token); the best N candidates without EOS are the beams of the next step;
- at the last step the top N candidates all finish; only the best N finished hypotheses are kept;
- a prompt is done once it has N finished hypotheses and its best running beam, scored at its
  current length, is no better than the worst of them (the early_stopping=False heuristic);
- the answer is the best-scoring finished hypothesis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lmforge.inference.batch import TokenBuffer, next_token_logits
from lmforge.inference.sampling import apply_repetition_penalty

if TYPE_CHECKING:
    from lmforge.inference.generate import GenerationConfig

# A score for "impossible" that stays finite, as in transformers, so sums never become NaN.
IMPOSSIBLE = -1.0e9


class FinishedHypotheses:
    """The best `size` finished sequences of one prompt, best first, as (score, tokens)."""

    def __init__(self, size: int):
        self.size = size
        self.items: list[tuple[float, list[int]]] = []

    def add(self, score: float, tokens: list[int]) -> None:
        self.items.append((score, tokens))
        self.items.sort(key=lambda item: -item[0])  # stable: an earlier hypothesis wins a tie
        del self.items[self.size :]

    @property
    def is_full(self) -> bool:
        return len(self.items) == self.size

    @property
    def worst_score(self) -> float:
        return self.items[-1][0]

    def best(self) -> list[int]:
        return self.items[0][1]


@torch.inference_mode()
def beam_search(
    model,
    prompts: list[list[int]],
    config: GenerationConfig,
    max_new: int,
    eos_token_ids: set[int] | frozenset[int],
    pad_token_id: int,
) -> list[list[int]]:
    """The best sequence of new tokens for each prompt (ending in EOS if it finished that way).

    Each prompt occupies num_beams consecutive rows of one batch; when beams move between rows, the
    token buffer and the KV cache rows move with them.
    """
    if max_new <= 0:
        return [[] for _ in prompts]
    B, N, device = len(prompts), config.num_beams, model.device
    vocab_size = model.config.vocab_size if config.repetition_penalty != 1.0 else None
    capacity = max(len(p) for p in prompts) + max_new
    batch = TokenBuffer(
        [p for p in prompts for _ in range(N)], capacity, pad_token_id, device, vocab_size=vocab_size
    )
    cache = model.new_cache(B * N, capacity - 1) if config.use_cache else None
    # Only the first copy of each prompt starts live; otherwise all N would pick the same tokens.
    scores = torch.full((B, N), IMPOSSIBLE, device=device)
    scores[:, 0] = 0.0
    finished = [FinishedHypotheses(N) for _ in range(B)]
    is_done = [False] * B
    eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=device)
    first_row = torch.arange(B, device=device)[:, None] * N  # (B, 1)
    for step in range(max_new):
        log_probs = F.log_softmax(next_token_logits(model, batch, cache), dim=-1)
        if batch.seen is not None:
            log_probs = apply_repetition_penalty(log_probs, batch.seen, config.repetition_penalty)
        V = log_probs.shape[-1]
        totals = (log_probs.view(B, N, V) + scores[:, :, None]).view(B, N * V)
        top_scores, top_index = totals.topk(min(max(2, 1 + len(eos_token_ids)) * N, N * V))  # best first
        beams, tokens = top_index // V, top_index % V  # (B, K)
        is_last = step == max_new - 1
        ends = torch.isin(tokens, eos) | is_last
        norm = (step + 1) ** config.length_penalty  # the generated length, EOS included
        _add_finished(finished, is_done, batch, top_scores / norm, ends, beams, tokens)
        if is_last:
            break
        scores = _go_on(batch, cache, top_scores + ends.float() * IMPOSSIBLE, first_row + beams, tokens, N)
        _update_done(is_done, finished, (scores[:, 0] / norm).tolist())
        if all(is_done):
            break
    return [hyps.best() for hyps in finished]


def _go_on(batch, cache, running, rows, tokens, n: int) -> torch.Tensor:
    """Keep each prompt's n best running candidates of (B, K): the buffer's and the cache's rows move to
    the beams they continue and their tokens are appended; returns their scores (B, n)."""
    keep = running.topk(n).indices  # (B, n)
    rows = rows.gather(1, keep).view(-1)
    batch.reorder(rows)
    if cache is not None:
        cache.reorder(rows)
    batch.append(tokens.gather(1, keep).view(-1))
    return running.gather(1, keep)


def _add_finished(finished, is_done, batch, normalized, ends, beams, tokens) -> None:
    """Record the candidates among the top N of each prompt that end here (EOS or the token limit)."""
    N = finished[0].size
    ends = ends[:, :N].tolist()
    if not any(any(row) for row in ends):
        return
    normalized, beams, tokens = normalized[:, :N].tolist(), beams[:, :N].tolist(), tokens[:, :N].tolist()
    for b, hyps in enumerate(finished):
        if is_done[b]:
            continue
        for r in range(N):
            if ends[b][r]:
                hyps.add(normalized[b][r], [*batch.generated(b * N + beams[b][r]), tokens[b][r]])


def _update_done(is_done, finished, best_possible) -> None:
    """A prompt is done when its N finished hypotheses all beat its best running beam, scored at the
    current length (transformers' heuristic for early_stopping=False: not a bound, as scores can grow)."""
    for b, hyps in enumerate(finished):
        is_done[b] = is_done[b] or (hyps.is_full and not best_possible[b] > hyps.worst_score)
