"""Pretraining objectives for encoders and encoder-decoders, as pure functions on token ids.

- Masked language modelling (Devlin et al. 2019, "BERT"): 15% of the ordinary tokens are chosen; of
  those 80% become [MASK], 10% a random ordinary token and 10% stay as they are. The model predicts
  the original token at the chosen positions only: labels are IGNORE_INDEX everywhere else. The same
  recipe as Hugging Face's DataCollatorForLanguageModeling, except that random replacements are drawn
  from the ordinary vocabulary, never a special token.
- Span corruption (Raffel et al. 2020, "T5", section 3.1.4): 15% of the tokens, in spans of mean length
  3, are noise. Each noise span is replaced in the input by one sentinel (<extra_id_0>, <extra_id_1>,
  ... in order); the target is each sentinel followed by the span it stands for, then EOS:
      input   Thank you <extra_id_0> me to your party <extra_id_1> week </s>
      target  <extra_id_0> for inviting <extra_id_1> last </s>
  The span layout follows `random_spans_noise_mask` of Hugging Face's run_t5_mlm_flax.py: the noise
  and non-noise token counts are fixed by the length, so every row of a batch has the same input and
  target lengths, and only the segmentation into spans is random.

Every random draw takes an explicit `torch.Generator`: `generator_for(seed, 0, sample)` makes the
masks of a training batch a pure function of its position, so a resumed run draws the same masks.
"""

from __future__ import annotations

import numpy as np
import torch

from lmforge.errors import LmforgeError

IGNORE_INDEX = -100  # label value of positions that carry no loss (padding, prompts, unmasked tokens)
MLM_PROBABILITY = 0.15
NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


def generator_for(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of ints (e.g. seed, step, micro-batch, rank), well mixed."""
    seed = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(seed) & (2**63 - 1))


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    special_ids: torch.Tensor,
    random_ids: torch.Tensor,
    generator: torch.Generator,
    mlm_probability: float = MLM_PROBABILITY,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of `input_ids` (B, T): (masked inputs, labels), both (B, T).

    special_ids: ids never chosen (padding, [CLS], [SEP], ...); random_ids: the ids a random replacement
    is drawn from. Each ordinary token is chosen independently with probability `mlm_probability`.
    """
    shape = input_ids.shape
    is_special = torch.isin(input_ids, special_ids.to(input_ids.device))
    chosen = (torch.rand(shape, generator=generator) < mlm_probability).to(input_ids.device) & ~is_special
    labels = torch.where(chosen, input_ids, IGNORE_INDEX)
    # One uniform draw splits the chosen tokens into [MASK] / random / unchanged.
    u = torch.rand(shape, generator=generator).to(input_ids.device)
    to_mask = chosen & (u < mask_fraction)
    to_random = chosen & (u >= mask_fraction) & (u < mask_fraction + random_fraction)
    picks = torch.randint(len(random_ids), shape, generator=generator).to(input_ids.device)
    inputs = torch.where(to_mask, mask_token_id, input_ids)
    inputs = torch.where(to_random, random_ids.to(input_ids.device)[picks], inputs)
    return inputs, labels


def noise_counts(
    length: int, noise_density: float = NOISE_DENSITY, mean_span: float = MEAN_NOISE_SPAN_LENGTH
) -> tuple[int, int]:
    """(noise tokens, noise spans) of a sequence of `length` tokens: fixed by the length alone."""
    if length < 2:
        raise LmforgeError(f"span corruption needs sequences of at least 2 tokens, got {length}")
    n_noise = min(max(round(length * noise_density), 1), length - 1)
    n_spans = max(round(min(n_noise, length - n_noise) / mean_span), 1)
    return n_noise, n_spans


def span_corruption_lengths(
    length: int, noise_density: float = NOISE_DENSITY, mean_span: float = MEAN_NOISE_SPAN_LENGTH
) -> tuple[int, int]:
    """(input length, target length) after corrupting `length` tokens: sentinels and EOS included."""
    n_noise, n_spans = noise_counts(length, noise_density, mean_span)
    return length - n_noise + n_spans + 1, n_noise + n_spans + 1


def raw_length_for(
    input_length: int, noise_density: float = NOISE_DENSITY, mean_span: float = MEAN_NOISE_SPAN_LENGTH
) -> int:
    """The most raw tokens whose corrupted input fits in `input_length` (HF compute_input_and_target_lengths)."""
    if input_length < 3:
        raise LmforgeError(f"span corruption needs an input length of at least 3, got {input_length}")
    length = 2
    while span_corruption_lengths(length + 1, noise_density, mean_span)[0] <= input_length:
        length += 1
    return length


def random_spans_noise_mask(
    length: int,
    generator: torch.Generator,
    noise_density: float = NOISE_DENSITY,
    mean_span: float = MEAN_NOISE_SPAN_LENGTH,
) -> torch.Tensor:
    """A (length,) bool mask, True on noise: non-noise and noise spans alternate, non-noise first."""
    n_noise, n_spans = noise_counts(length, noise_density, mean_span)
    noise_lengths = _random_segmentation(n_noise, n_spans, generator)
    keep_lengths = _random_segmentation(length - n_noise, n_spans, generator)
    interleaved = torch.stack([keep_lengths, noise_lengths], dim=1).reshape(-1)  # keep, noise, keep, ...
    span_index = torch.repeat_interleave(torch.arange(2 * n_spans), interleaved)
    return span_index % 2 == 1


def _random_segmentation(n_items: int, n_segments: int, generator: torch.Generator) -> torch.Tensor:
    """Lengths (n_segments,) of a uniformly random split of n_items into n_segments non-empty parts."""
    # Choose which n_segments - 1 of the n_items - 1 gaps between items start a new segment.
    is_cut = torch.zeros(n_items - 1, dtype=torch.bool)
    is_cut[torch.randperm(n_items - 1, generator=generator)[: n_segments - 1]] = True
    segment_id = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long), is_cut.long()]), dim=0)
    return torch.bincount(segment_id, minlength=n_segments)


def corrupt_spans(
    tokens: torch.Tensor,
    *,
    sentinel_ids: torch.Tensor,
    eos_token_id: int,
    generator: torch.Generator,
    noise_density: float = NOISE_DENSITY,
    mean_span: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 span corruption of `tokens` (B, L): (input_ids (B, L_in), labels (B, L_out)).

    sentinel_ids[i] is the id of <extra_id_i>; the lengths are `span_corruption_lengths(L)`.
    """
    _, n_spans = noise_counts(tokens.shape[1], noise_density, mean_span)
    if n_spans > len(sentinel_ids):
        raise LmforgeError(
            f"sequences of {tokens.shape[1]} tokens need {n_spans} sentinel tokens but the tokenizer has "
            f"{len(sentinel_ids)}; use a shorter --seq-len or a tokenizer with more <extra_id_N> tokens"
        )
    inputs, labels = [], []
    for row in tokens:
        is_noise = random_spans_noise_mask(len(row), generator, noise_density, mean_span).to(row.device)
        inputs.append(_replace_spans(row, is_noise, sentinel_ids, eos_token_id))
        labels.append(_replace_spans(row, ~is_noise, sentinel_ids, eos_token_id))
    return torch.stack(inputs), torch.stack(labels)


def _replace_spans(
    row: torch.Tensor, is_span: torch.Tensor, sentinel_ids: torch.Tensor, eos: int
) -> torch.Tensor:
    """`row` with each run of `is_span` replaced by the next sentinel, then EOS."""
    starts = is_span & ~torch.cat([is_span.new_zeros(1), is_span[:-1]])
    span_number = torch.cumsum(starts.long(), dim=0) - 1
    replaced = torch.where(starts, sentinel_ids.to(row.device)[span_number.clamp(min=0)], row)
    kept = replaced[starts | ~is_span]
    return torch.cat([kept, kept.new_tensor([eos])])


def sentinel_ids_of(tokenizer) -> list[int]:
    """Ids of <extra_id_0>, <extra_id_1>, ... in the tokenizer, in that order (empty if it has none)."""
    ids = []
    while (i := tokenizer.token_to_id(f"<extra_id_{len(ids)}>")) is not None:
        ids.append(i)
    return ids


def masked_lm_batch(
    tokens: torch.Tensor,
    generator: torch.Generator,
    *,
    mask_token_id: int,
    special_ids: torch.Tensor,
    random_ids: torch.Tensor,
    cls_token_id: int | None = None,
) -> dict:
    """A masked-LM training batch from windows (B, T), each opened by [CLS] when cls_token_id is given."""
    if cls_token_id is not None:
        tokens = torch.cat([tokens.new_full((tokens.shape[0], 1), cls_token_id), tokens], dim=1)
    inputs, labels = mask_tokens(
        tokens,
        mask_token_id=mask_token_id,
        special_ids=special_ids,
        random_ids=random_ids,
        generator=generator,
    )
    return {"input_ids": inputs, "labels": labels}


def shift_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: labels (B, T) shifted one step right after the start token.

    IGNORE_INDEX labels become padding, as in T5: the decoder never sees -100 as an id.
    """
    shifted = torch.cat(
        [labels.new_full((labels.shape[0], 1), decoder_start_token_id), labels[:, :-1]], dim=1
    )
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)


def span_corruption_batch(
    tokens: torch.Tensor,
    generator: torch.Generator,
    *,
    sentinel_ids: torch.Tensor,
    eos_token_id: int,
    decoder_start_token_id: int,
    pad_token_id: int,
) -> dict:
    """A span-corruption training batch from windows (B, L): encoder inputs, decoder inputs, labels."""
    inputs, labels = corrupt_spans(
        tokens, sentinel_ids=sentinel_ids, eos_token_id=eos_token_id, generator=generator
    )
    decoder_input_ids = shift_right(labels, decoder_start_token_id, pad_token_id)
    return {"input_ids": inputs, "decoder_input_ids": decoder_input_ids, "labels": labels}


class ObjectiveBatches:
    """Batches of an objective over `windows` (a lmforge.data.tokens.PackedBatches), reproducibly.

    `make(tokens, generator)` turns raw windows (B, T) into a batch dict. The training batch from global
    sample g on draws from generator_for(seed, 0, g), so a resumed run draws the same masks whatever
    the number of processes;
    validation batch i from generator_for(seed, 1, i), so every evaluation scores the same masks.
    """

    def __init__(self, windows, make, *, seed: int):
        self.windows, self.make, self.seed = windows, make, seed

    def samples(self, first: int) -> dict:
        """The batch of the windows' samples from global sample `first` on (see PackedBatches.samples)."""
        tokens, _ = self.windows.samples(first)  # the window's first T tokens; the rest is its next
        return self.make(tokens, generator_for(self.seed, 0, first))

    def eval_batches(self, n_batches: int) -> list[dict]:
        return [
            self.make(tokens, generator_for(self.seed, 1, i))
            for i, (tokens, _) in enumerate(self.windows.eval_batches(n_batches))
        ]
