"""`lmforge pretrain`: a language model from scratch on the user's text or the built-in corpus.

Data goes through `lmforge prepare` (into OUT/data unless a prepared directory is given), the model
comes from a named preset sized to the tokenizer, and the one training loop does the rest. The
objective decides the model family, the tokenizer trained, the batches and the loss:
  clm   causal language modelling (GPT-2, Llama): predict each next token; byte-level BPE
  mlm   masked language modelling (BERT, Devlin et al. 2019): predict 15% masked tokens; WordPiece
  span  span corruption (T5, Raffel et al. 2020): write the dropped spans after sentinels; Unigram
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from lmforge.config import bounded, option
from lmforge.device import check_device, check_precision, print0, seed_everything
from lmforge.errors import LmforgeError
from lmforge.train.distributed import World, barrier, init_world, shutdown
from lmforge.train.loop import TrainConfig, Trainer
from lmforge.train.loss import IGNORE_INDEX, causal_lm_loss, masked_lm_loss, seq2seq_loss


class Objective(NamedTuple):
    model_types: tuple[str, ...]  # the model families it trains
    tokenizer_kind: str  # the tokenizer `prepare` trains for it
    preset: str  # a preset that fits, for error messages
    loss_fn: object


OBJECTIVES = {
    "clm": Objective(("gpt2", "llama"), "bpe", "tiny", causal_lm_loss),
    "mlm": Objective(("bert", "roberta"), "wordpiece", "bert-tiny", masked_lm_loss),
    "span": Objective(("t5",), "unigram", "t5-tiny", seq2seq_loss),
}


@dataclass
class PretrainConfig(TrainConfig):
    data: list[str] = field(
        default_factory=list
    )  # files, directories or a prepared dir; empty: built-in corpus
    preset: str = "tiny"  # model size: tiny, demo, gpt2, llama-tiny, bert-tiny, t5-tiny, ... (see presets.py)
    objective: str = "clm"  # clm (causal LM: gpt2, llama), mlm (masked LM: bert), span (span corruption: t5)
    tokenizer: str | None = None  # an existing tokenizer directory; default: train one on the data
    vocab_size: int = bounded(4096, ge=1, lt=2**31)  # of the tokenizer trained when none is given
    val_fraction: float = bounded(
        0.01, gt=0, lt=0.5
    )  # share of the documents (of a one-document corpus: of its tokens) held out
    glob: str = "*.txt"  # which files to read from directories
    device: str | None = None  # cpu, cuda, cuda:1, mps (default: the best available)
    # The model's shape, over the preset's (each checked against the family, saved in config.json):
    d_model: int | None = bounded(None, ge=1)  # width of the residual stream (default: the preset's)
    n_layers: int | None = bounded(None, ge=1)  # blocks (T5: encoder blocks; the decoder follows)
    n_heads: int | None = bounded(None, ge=1)  # attention heads (they must divide --d-model)
    n_kv_heads: int | None = bounded(None, ge=1)  # key/value heads, Llama's grouped-query attention
    d_head: int | None = bounded(None, ge=1)  # size of each head (Llama, T5; default: d_model / n_heads)
    d_ff: int | None = bounded(None, ge=1)  # hidden size of the feed-forward layer
    dropout: float | None = bounded(
        None, ge=0, lt=1
    )  # dropout probability in training (default: the preset's)
    rope_theta: float | None = bounded(None, gt=0)  # rotary position base (Llama)
    max_seq_len: int | None = bounded(None, ge=1)  # the context (default: the preset's, at least --seq-len)
    # NOTE: the same prompt and seed at every evaluation, so the samples differ only by what was learned.
    sample_prompt: str | None = option(
        None,
        "the prompt of the sample at each evaluation, clm only (default: the validation text's first tokens)",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise LmforgeError(
                f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}"
            )
        if self.sample_prompt is not None and (not self.sample_prompt or self.objective != "clm"):
            raise LmforgeError(
                "--sample-prompt must be a non-empty text, for --objective clm (mlm and span show a "
                f"validation window filled in instead); got {self.sample_prompt!r} with --objective {self.objective}"
            )
        self.shape()  # a shape that does not fit its family fails here, before any data work
        if self.max_seq_len is not None and self.max_seq_len < self.seq_len:
            raise LmforgeError(
                f"--max-seq-len {self.max_seq_len} is shorter than --seq-len {self.seq_len}, the sequences "
                "it trains on; raise it, or lower --seq-len"
            )

    def shape(self) -> dict:
        """The shape flags given (d_model, n_layers, ...), checked against the preset's family."""
        from lmforge.models import get_preset
        from lmforge.models.presets import SHAPE_FIELDS

        shape = {k: getattr(self, k) for k in SHAPE_FIELDS if getattr(self, k) is not None}
        if shape:
            get_preset(self.preset, **shape)
        return shape


def check_objective_fits(objective: str, preset: str) -> None:
    """An objective trains only its own families: mlm an encoder, span an encoder-decoder, clm a decoder."""
    from lmforge.models import get_preset

    model_type = get_preset(preset).model_type
    if model_type not in OBJECTIVES[objective].model_types:
        fitting = next((name for name, o in OBJECTIVES.items() if model_type in o.model_types), None)
        instead = f"--objective {fitting}" if fitting else "another preset"
        raise LmforgeError(
            f"objective {objective!r} does not fit preset {preset!r} (a {model_type} model); "
            f"{objective} trains {'/'.join(OBJECTIVES[objective].model_types)} models such as "
            f"--preset {OBJECTIVES[objective].preset}; or pass {instead}"
        )


def prepared_data_dir(config: PretrainConfig, world: World) -> Path:
    """A directory of token files: the one given, or OUT/data prepared now (rank 0; others wait)."""
    if len(config.data) == 1 and (Path(config.data[0]) / "manifest.json").is_file():
        return Path(config.data[0])
    from lmforge.data.prepare import PrepareConfig, prepare

    out = Path(config.out) / "data"
    wanted = PrepareConfig(
        data=list(config.data),
        out=str(out),
        glob=config.glob,
        tokenizer=config.tokenizer,
        tokenizer_kind=OBJECTIVES[config.objective].tokenizer_kind,
        vocab_size=config.vocab_size,
        val_fraction=config.val_fraction,
        seed=config.seed,
    )
    if world.is_main and not _same_prepare(out, wanted):
        prepare(wanted, progress=config.progress)
        (out / "prepare_config.json").write_text(json.dumps(dataclasses.asdict(wanted), indent=1))
    barrier(world)
    return out


def _same_prepare(out: Path, wanted) -> bool:
    done = out / "prepare_config.json"
    return (
        done.is_file()
        and (out / "manifest.json").is_file()
        and json.loads(done.read_text()) == json.loads(json.dumps(dataclasses.asdict(wanted)))
    )


def pretrain(config: PretrainConfig) -> dict:
    """Run pretraining; returns the final metrics row."""
    from lmforge.data.tokens import TokenFile
    from lmforge.hf.config import to_hf_config
    from lmforge.models import build_model
    from lmforge.tokenizers import load_tokenizer

    world = init_world(check_device(config.device))
    try:
        check_objective_fits(config.objective, config.preset)  # fails before any data work
        check_precision(config.precision, world.device)
        data_dir = prepared_data_dir(config, world)
        train_file, val_file = TokenFile.load(data_dir, "train"), TokenFile.load(data_dir, "val")
        tok = load_tokenizer(data_dir)
        seed_everything(config.seed)
        model_config = _model_config(config, tok)
        model = build_model(model_config)
        c = model_config
        print0(
            f"model: {config.preset} (d_model {c.d_model}, {c.n_layers} layers, {c.n_heads} heads, "
            f"{model.num_params() / 1e6:.2f}M parameters), objective: "
            f"{config.objective}, data: {train_file.manifest['train_tokens']:,} training tokens from {data_dir}"
        )
        batches = _batches(config, tok, train_file, val_file, world)
        hf_config = {k: v for k, v in to_hf_config(model_config).items() if k != "torch_dtype"}
        fingerprint = {
            "model": hf_config,
            "tokenizer": train_file.manifest["tokenizer_sha256"],
            "data": {k: train_file.manifest[k] for k in ("sources", "train_tokens", "val_tokens")},
        }
        trainer = Trainer(
            model,
            config,
            train_batch=batches.train,
            eval_batches=batches.eval,
            world=world,
            tokenizer=tok,
            loss_fn=OBJECTIVES[config.objective].loss_fn,
            fingerprint=fingerprint,
            sample_prompt=_sample_prompt(config, tok, val_file),
            sample_fn=batches.sample,
        )
        return trainer.fit()
    finally:
        shutdown(world)


def _model_config(config: PretrainConfig, tok):
    """The preset sized to the tokenizer and sequence length, with the tokenizer's special ids."""
    from lmforge.models import get_preset

    preset = get_preset(config.preset)
    wanted = {
        "vocab_size": _round_up(tok.vocab_size, 64),
        "max_seq_len": config.max_seq_len or max(config.seq_len, preset.max_seq_len),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    if config.objective != "clm":  # decoders keep their GPT-2 convention: no pad id in the config
        wanted.update(pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.pad_token_id)
    if config.objective == "mlm":
        # As BertForMaskedLM: no pooler, which masked-LM alone would leave untrained (and without
        # optimizer state, which resuming needs for every parameter).
        wanted.update(use_pooler=False, use_mlm_head=True)
    names = {f.name for f in dataclasses.fields(preset)}
    return get_preset(config.preset, **{k: v for k, v in wanted.items() if k in names}, **config.shape())


class _Batches(NamedTuple):
    train: object  # first global sample -> batch dict of batch_size samples
    eval: list[dict]
    sample: object  # model -> text, or None for the loop's generated sample


def _batches(config: PretrainConfig, tok, train_file, val_file, world: World) -> _Batches:
    """Training batches, validation batches and the evaluation sample of the configured objective."""
    from lmforge.data.tokens import PackedBatches

    make, window = _objective_batch(config, tok)
    train_window, val_window = fit_windows(window, len(train_file), len(val_file))
    packed = functools.partial(PackedBatches, batch_size=config.batch_size, seed=config.seed)
    train = packed(
        train_file, train_window, rank=world.rank, world_size=world.size, grad_accum=config.grad_accum
    )
    val = packed(val_file, val_window)
    config.steps_for_epochs(train.num_windows, world.size)  # --epochs: passes over the training windows
    if config.epochs is not None:
        print0(
            f"{config.epochs:g} epochs of {train.num_windows:,} training windows: {config.max_steps:,} steps"
        )
    n_eval = min(config.eval_batches * world.size, val.num_windows // val.batch_size)
    if make is None:
        evals = [_as_dict(b) for b in val.eval_batches(max(n_eval, 1))]
        return _Batches(lambda first: _as_dict(train.samples(first)), evals, None)
    from lmforge.data.objectives import ObjectiveBatches

    train_batches = ObjectiveBatches(train, make, seed=config.seed)
    evals = ObjectiveBatches(val, make, seed=config.seed).eval_batches(max(n_eval, 1))
    sample = _fill_masks if config.objective == "mlm" else _write_spans
    return _Batches(
        train_batches.samples, evals, functools.partial(sample, tok, evals[0], config.sample_tokens)
    )


# The shortest window an objective trains on (span corruption needs two tokens to corrupt one).
MIN_WINDOW = 2


def fit_windows(window: int, n_train: int, n_val: int) -> tuple[int, int]:
    """(training window, validation window) in raw tokens: `window`, shortened where a split is too small
    to hold one window of window + 1 tokens, as the seeds' two-sentence corpus is."""
    for split, n in (("training", n_train), ("validation", n_val)):
        if n < MIN_WINDOW + 1:
            raise LmforgeError(
                f"the corpus is too small: its {split} split has {n} tokens, and pretraining needs at least "
                f"{MIN_WINDOW + 1} in each split ({2 * MIN_WINDOW + 2} in all); add text"
                + (", or raise --val-fraction" if split == "validation" else "")
            )
    fitted = min(window, n_train - 1), min(window, n_val - 1)
    if fitted != (window, window):
        print0(
            f"the corpus is small ({n_train:,} training and {n_val:,} validation tokens): windows of "
            f"{fitted[0]} training and {fitted[1]} validation tokens instead of {window}"
        )
    return fitted


def _objective_batch(config: PretrainConfig, tok):
    """(make(tokens, generator) -> batch, raw window length) of mlm and span; (None, seq_len) for clm."""
    from lmforge.data import objectives

    if config.objective == "clm":
        return None, config.seq_len
    special = torch.tensor(tok.all_special_ids, dtype=torch.long)
    if config.objective == "mlm":
        if tok.mask_token_id is None:
            raise LmforgeError(
                "the tokenizer has no [MASK] token for masked-LM pretraining; use a WordPiece one"
            )
        ordinary = torch.tensor([i for i in range(tok.vocab_size) if not tok.is_special_id(i)])
        make = functools.partial(
            objectives.masked_lm_batch,
            mask_token_id=tok.mask_token_id,
            special_ids=special,
            random_ids=ordinary,
            cls_token_id=tok.cls_token_id,
        )
        return make, config.seq_len - (tok.cls_token_id is not None)
    sentinels = objectives.sentinel_ids_of(tok)
    if not sentinels or tok.eos_token_id is None or tok.pad_token_id is None:
        raise LmforgeError(
            "span corruption needs a tokenizer with <extra_id_N> sentinels, an end token and a pad token; "
            "use a Unigram one (`lmforge tokenizer train --kind unigram`)"
        )
    make = functools.partial(
        objectives.span_corruption_batch,
        sentinel_ids=torch.tensor(sentinels),
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return make, objectives.raw_length_for(config.seq_len)


@torch.no_grad()
def _fill_masks(tok, batch: dict, n_tokens: int, model) -> str:
    """A validation window with its masks, and the same window with the model's guesses filled in."""
    input_ids, labels = batch["input_ids"][:1, :n_tokens], batch["labels"][:1, :n_tokens]
    predicted = model(input_ids.to(model.device)).argmax(-1).cpu()
    is_chosen = labels != IGNORE_INDEX
    filled, original = torch.where(is_chosen, predicted, input_ids), torch.where(is_chosen, labels, input_ids)
    show = functools.partial(tok.decode, skip_special_tokens=False)
    return f"masked: {show(input_ids[0])}\nfilled: {show(filled[0])}\noriginal: {show(original[0])}"


@torch.no_grad()
def _write_spans(tok, batch: dict, n_tokens: int, model) -> str:
    """A corrupted validation input, its target, and the target the model writes greedily."""
    from lmforge.inference.texts import generate_texts

    input_ids, target = batch["input_ids"][0].tolist(), batch["labels"][0]
    (written,) = generate_texts(
        model, tok, [input_ids], max_new_tokens=min(len(target), n_tokens), skip_special_tokens=False
    )
    show = functools.partial(tok.decode, skip_special_tokens=False)
    return f"input: {show(input_ids)}\ntarget: {show(target)}\nmodel: {written}"


def _as_dict(batch) -> dict:
    input_ids, labels = batch
    return {"input_ids": input_ids, "labels": labels}


def _sample_prompt(config: PretrainConfig, tok, val_file) -> str | None:
    """--sample-prompt, else the first few tokens of the validation text: a prompt in the corpus's own style."""
    if config.objective != "clm" or config.sample_prompt:
        return config.sample_prompt
    ids = [int(i) for i in val_file.tokens[:6] if int(i) not in tok.all_special_ids]
    return tok.decode(ids) or "\n"


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple
