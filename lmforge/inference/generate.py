"""Text generation: the settings, the engine on token ids, and the text layer on top of it.

`generate_ids` is the engine: a batch of prompts is prefilled once, then decoded one token per step
with the KV cache (greedy, sampling, or beam search); it knows no tokenizer. `generate` turns text
into prompts and the generated ids back into text, incrementally, so that streaming and stop strings
work on exactly the text the caller would get in one piece.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from lmforge.config import bounded, check_fields
from lmforge.errors import LmforgeError
from lmforge.inference.batch import TokenBuffer, next_token_logits
from lmforge.inference.beam import beam_search
from lmforge.inference.few_rows import few_rows_linear
from lmforge.inference.sampling import sample_next
from lmforge.inference.seq2seq import decoder_start_prompts, encode_inputs
from lmforge.inference.static_cache import StaticDecoder
from lmforge.inference.stop import StopChecker
from lmforge.tokenizers import IncrementalDecoder

# Beams are rows of one batch: past a few dozen they cost memory and time and no longer change the text.
MAX_BEAMS = 64


@dataclass
class GenerationConfig:
    """How to generate. Temperature 0 is greedy; num_beams > 1 is beam search, which is deterministic
    (temperature, top_k and top_p do not apply to it) and cannot stream."""

    max_new_tokens: int = bounded(64, ge=0)  # tokens to generate at most
    temperature: float = bounded(0.8, ge=0)  # 0 means greedy
    top_k: int | None = bounded(None, ge=1)  # sample among the k most likely tokens
    top_p: float | None = bounded(
        None, gt=0, le=1
    )  # sample among the most likely tokens holding probability p
    repetition_penalty: float = bounded(1.0, gt=0)  # > 1 discourages tokens already present
    seed: int | None = None  # makes sampling reproducible (any integer: taken modulo 2**63)
    stop: list[str] = field(default_factory=list)  # strings that end the text (never printed)
    num_beams: int = bounded(1, ge=1, le=MAX_BEAMS)  # > 1: beam search
    length_penalty: float = 1.0  # beam search: > 1 favours longer texts
    use_cache: bool = True  # KV cache (off recomputes every step)
    # torch.compile the decode step on a static KV cache; None: on for CUDA, off on CPU (where the
    # compilation takes longer than it saves on a short generation)
    use_compile: bool | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise LmforgeError naming the first field outside its type or range (config.check_fields)."""
        check_fields(self)  # numbers are finite: an infinite temperature or penalty means NaN logits
        if not all(self.stop):
            raise LmforgeError(f"stop must be a list of non-empty strings, got {self.stop!r}")


def generate_ids(
    model,
    prompts: list[list[int]],
    config: GenerationConfig,
    *,
    eos_token_ids: set[int] | frozenset[int] = frozenset(),
    pad_token_id: int = 0,
    ended_rows: set[int] | None = None,
) -> Iterator[list[int | None]]:
    """Generate from a batch of prompts (token ids); yield, per step, each row's new token, or None
    for a row that has finished.

    A row finishes after yielding an EOS token, after max_new_tokens, or once the caller adds its index
    to `ended_rows` (read before every step: a caller's stop string ends a row without an extra step).
    New tokens are capped so the sequence fits the model's context (max_seq_len) and checked here, so
    errors are raised by this call, before the first step.

    For an encoder-decoder (T5) the prompts are the encoder's inputs: they are encoded once, and the
    decoder generates from its start token (which is not yielded).
    """
    check_can_generate(model)
    _check_prompts(model, prompts)
    prompt_len = max(len(p) for p in prompts)
    # The last new token is never fed back, so a full context still yields one more token.
    max_new = min(config.max_new_tokens, model.config.max_seq_len - prompt_len + 1)
    if getattr(model, "is_encoder_decoder", False):
        max_new = min(config.max_new_tokens, model.config.max_seq_len)  # the output has its own context
        model = encode_inputs(model, prompts, pad_token_id, copies=config.num_beams)
        prompts = decoder_start_prompts(model, len(prompts))
    ended_rows = set() if ended_rows is None else ended_rows
    if config.num_beams > 1:
        return _beam_steps(model, prompts, config, max_new, eos_token_ids, pad_token_id, ended_rows)
    return _sample_steps(model, prompts, config, max_new, eos_token_ids, pad_token_id, ended_rows)


def check_can_generate(model) -> None:
    """Refuse a model without a decoder (BERT, a classifier): it has no KV cache to decode with."""
    if not hasattr(model, "new_cache"):
        kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
        name = getattr(model, "name_or_path", None) or "this model"
        raise LmforgeError(
            f"{name} is an encoder ({kind}), which cannot generate text; generate needs a decoder (gpt2, "
            "llama) or an encoder-decoder (t5); use an encoder with embed, search, classify or answer"
        )


def _check_prompts(model, prompts: list[list[int]]) -> None:
    if not prompts:
        raise LmforgeError("no prompts given; pass at least one")
    if any(len(p) == 0 for p in prompts):
        raise LmforgeError(
            "empty prompt: it encodes to no tokens (and the tokenizer adds no BOS token); pass some text"
        )
    longest, max_seq_len = max(len(p) for p in prompts), model.config.max_seq_len
    if longest > max_seq_len:
        raise LmforgeError(
            f"the prompt has {longest} tokens, more than the model's context of {max_seq_len} "
            "(max_seq_len); shorten it"
        )
    vocab_size = model.config.vocab_size
    bad = next((t for p in prompts for t in p if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise LmforgeError(
            f"token id {bad} is outside the model's vocabulary of {vocab_size}; "
            "are the tokenizer and the model from the same checkpoint?"
        )


@torch.inference_mode()
def _sample_steps(model, prompts, config, max_new, eos_token_ids, pad_token_id, ended_rows):
    """Greedy or sampled decoding, one token per row per step."""
    if max_new <= 0:
        return
    vocab_size = model.config.vocab_size if config.repetition_penalty != 1.0 else None
    capacity = max(len(p) for p in prompts) + max_new
    batch = TokenBuffer(prompts, capacity, pad_token_id, model.device, vocab_size=vocab_size)
    next_logits = _logits_source(model, batch, config, capacity)
    generator = new_generator(config.seed, model.device)
    is_done = [False] * len(prompts)
    tokens = None
    for _ in range(max_new):
        tokens = sample_next(next_logits(tokens), config, generator, seen=batch.seen)
        # A finished row is still computed with the batch (its tokens are ignored), so rows never move.
        batch.append(tokens)
        step = [None if done else t for done, t in zip(is_done, tokens.tolist())]
        is_done = [done or t in eos_token_ids for done, t in zip(is_done, step)]
        yield step
        is_done = [done or row in ended_rows for row, done in enumerate(is_done)]
        if all(is_done):
            return


def _logits_source(model, batch: TokenBuffer, config: GenerationConfig, capacity: int):
    """A function from the tokens just appended to `batch` (None before the first step) to the
    next logits (B, V): on a static KV cache, or recomputing every step without a cache."""
    n_rows = len(batch.ids)
    if not config.use_cache:
        return lambda tokens: next_token_logits(model, batch, None)
    use_compile = model.device.type == "cuda" if config.use_compile is None else config.use_compile
    decoder = StaticDecoder(model, n_rows, capacity - 1, use_compile=use_compile)
    mask = batch.mask[:, : batch.length] if batch.is_padded else None

    def next_logits(tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is None:
            return decoder.prefill(batch.ids[:, : batch.length], mask)
        # NOTE: entered per step, not around the loop: a mode left on across a yield would also
        # catch the caller's own torch calls.
        with few_rows_linear(n_rows, model.device, model):
            return decoder.step(tokens)

    return next_logits


def _chat_prompt(tok, text: str) -> list[int]:
    """The ids of `text` as a user's message under the tokenizer's chat template, ready for the reply.
    As in training, the template writes the special tokens; the user's text stays text, even where it
    spells one ("<|im_end|>")."""
    from lmforge.tokenizers.chat import encode_chat

    if tok.chat_template is None:
        raise LmforgeError(
            "this model's tokenizer has no chat template, so --chat cannot write the prompt; fine-tune it with "
            "--task instruct (which saves one), or leave out --chat"
        )
    return encode_chat(tok, [{"role": "user", "content": text}], add_generation_prompt=True)


def _beam_steps(model, prompts, config, max_new, eos_token_ids, pad_token_id, ended_rows):
    """Beam search, then its best sequence per prompt replayed one token per step."""
    sequences = beam_search(model, prompts, config, max_new, eos_token_ids, pad_token_id)
    for i in range(max(len(s) for s in sequences)):
        if all(row in ended_rows for row in range(len(sequences))):
            return
        yield [s[i] if i < len(s) and row not in ended_rows else None for row, s in enumerate(sequences)]


def new_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # nondeterministic, and independent of the global RNG
    else:
        generator.manual_seed(seed % 2**63)  # any integer: torch takes 64 bits, and overflows above
    return generator


def generate(
    model,
    tok,
    prompt: str | list[str],
    config: GenerationConfig | None = None,
    *,
    stream=False,
    chat=False,
    timings: dict | None = None,
    **overrides,
):
    """The text generated after `prompt` (the prompt itself excluded), or a list for a list of prompts.

    With chat=True each prompt is a user's message, written with the tokenizer's chat template and its
    generation prompt (as a model fine-tuned with `--task instruct` saw its prompts), and the text is the reply.

    Keyword overrides replace config fields: `generate(model, tok, "Once", max_new_tokens=20)`.
    Generation of a row ends at EOS, after max_new_tokens, or before its first stop string (never
    included). With stream=True (one prompt) it returns an iterator of text pieces instead, which
    never split a character, hold back text that may start a stop string, and join to the same text.
    A `timings` dict, if given, receives the speed once generation ends (see `_timed`).
    """
    config = _with_overrides(config, overrides)
    texts = [prompt] if isinstance(prompt, str) else list(prompt)
    if stream and len(texts) != 1:
        raise LmforgeError(f"stream=True takes a single prompt, got {len(texts)}")
    if stream and config.num_beams > 1:
        raise LmforgeError(
            "beam search (num_beams > 1) cannot stream: its best sequence is known only at the end"
        )
    prompts = [
        _chat_prompt(tok, text) if chat else tok.encode(text, add_special_tokens=True) for text in texts
    ]
    texts = generate_from_ids(model, tok, prompts, config, stream=stream, timings=timings)
    return texts[0] if isinstance(prompt, str) and not stream else texts


def generate_from_ids(
    model, tok, prompts: list[list[int]], config: GenerationConfig, *, stream=False, timings=None
):
    """`generate` from prompts already encoded (a chat's conversation): a list of texts, one per
    prompt, or with stream=True (one prompt) an iterator of its text pieces."""
    eos_token_ids = eos_token_ids_of(model, tok)
    pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    ended_rows: set[int] = set()
    steps = generate_ids(
        model, prompts, config, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, ended_rows=ended_rows
    )
    if timings is not None:
        steps = _timed(steps, timings)
    pieces = _text_pieces(tok, steps, len(prompts), config.stop, eos_token_ids, ended_rows)
    if stream:
        return (piece for _, piece in pieces)
    outputs: list[list[str]] = [[] for _ in prompts]
    for row, piece in pieces:
        outputs[row].append(piece)
    return ["".join(row_pieces) for row_pieces in outputs]


def _timed(steps: Iterator[list[int | None]], timings: dict) -> Iterator[list[int | None]]:
    """The steps, unchanged; at the end `timings` holds new_tokens (all rows), ttft_s (prefill and the
    first token), total_s, and decode_tokens_per_s (the tokens after the first step over the time
    after it; None with a single step)."""
    start, first, n_first, n_tokens = time.perf_counter(), None, 0, 0
    for step in steps:
        n_tokens += sum(token is not None for token in step)
        if first is None:
            first, n_first = time.perf_counter() - start, n_tokens
        yield step
    total = time.perf_counter() - start
    decode = (n_tokens - n_first) / (total - first) if first is not None and total > first else None
    timings.update(new_tokens=n_tokens, ttft_s=first, total_s=total, decode_tokens_per_s=decode)


def _text_pieces(tok, steps, n_rows, stops, eos_token_ids, ended_rows) -> Iterator[tuple[int, str]]:
    """(row, text) pieces of the generated text, detokenized incrementally and cut at stop strings.

    Rows cut by a stop string are added to `ended_rows`, which the engine reads before its next step.
    """
    decoders = [IncrementalDecoder(tok) for _ in range(n_rows)]
    checkers = [StopChecker(stops) for _ in range(n_rows)]

    def finish(row: int) -> str:
        ended_rows.add(row)
        return checkers[row].push(decoders[row].flush()) + checkers[row].flush()

    for step in steps:
        for row, token in enumerate(step):
            if token is None or row in ended_rows:
                continue
            if token in eos_token_ids:
                piece = finish(row)  # EOS ends the text and is not part of it
            else:
                piece = checkers[row].push(decoders[row].push(token))
                if checkers[row].is_stopped:
                    ended_rows.add(row)
            if piece:
                yield row, piece
    for row in range(n_rows):
        piece = "" if row in ended_rows else finish(row)
        if piece:
            yield row, piece


def _with_overrides(config: GenerationConfig | None, overrides: dict) -> GenerationConfig:
    config = config or GenerationConfig()
    names = [f.name for f in dataclasses.fields(GenerationConfig)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise LmforgeError(f"unknown generation option {unknown[0]!r}; the options are {', '.join(names)}")
    config = dataclasses.replace(config, **overrides)  # runs the validation again
    config.validate()
    return config


def eos_token_ids_of(model, tok) -> frozenset[int]:
    """The tokenizer's EOS, the model's, and its generation_config.json's (Llama 3 lists several
    there, e.g. end of turn)."""
    ids = []
    for eos in (model.config.eos_token_id, getattr(model, "generation_config", {}).get("eos_token_id")):
        ids += [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
    return frozenset(ids)
