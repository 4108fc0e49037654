"""`lmforge pretrain`: a language model from scratch on the user's text or the built-in corpus.

Data goes through `lmforge prepare` (into OUT/data unless a prepared directory is given), the model
comes from a named preset sized to the tokenizer, and the one training loop does the rest.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.device import default_device, print0, seed_everything
from lmforge.errors import LmforgeError
from lmforge.train.distributed import World, barrier, init_world, shutdown
from lmforge.train.loop import TrainConfig, Trainer

OBJECTIVES = ("clm",)


@dataclass
class PretrainConfig(TrainConfig):
    data: list[str] = field(
        default_factory=list
    )  # files, directories or a prepared dir; empty: built-in corpus
    preset: str = "tiny"  # model size: tiny, demo, gpt2, gpt2-medium, llama-tiny, llama-demo, llama-1b
    objective: str = "clm"  # training objective: clm (causal language modelling)
    tokenizer: str | None = None  # an existing tokenizer directory; default: train one on the data
    vocab_size: int = 4096  # of the tokenizer trained when none is given
    glob: str = "*.txt"  # which files to read from directories
    device: str | None = None  # cpu, cuda, cuda:1, mps (default: the best available)

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise LmforgeError(
                f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}"
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
        vocab_size=config.vocab_size,
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
    from lmforge.data.tokens import PackedBatches, TokenFile
    from lmforge.hf.config import to_hf_config
    from lmforge.models import build_model, get_preset
    from lmforge.tokenizers import load_tokenizer

    world = init_world(torch.device(config.device) if config.device else default_device())
    try:
        get_preset(config.preset)  # an unknown preset fails before any data work
        data_dir = prepared_data_dir(config, world)
        train_file, val_file = TokenFile.load(data_dir, "train"), TokenFile.load(data_dir, "val")
        tok = load_tokenizer(data_dir)
        seed_everything(config.seed)
        model_config = get_preset(
            config.preset,
            vocab_size=_round_up(tok.vocab_size, 64),
            max_seq_len=max(config.seq_len, get_preset(config.preset).max_seq_len),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        model = build_model(model_config)
        print0(
            f"model: {config.preset} ({model.num_params() / 1e6:.2f}M parameters), "
            f"data: {train_file.manifest['train_tokens']:,} training tokens from {data_dir}"
        )
        batches = PackedBatches(
            train_file,
            config.seq_len,
            config.batch_size,
            seed=config.seed,
            rank=world.rank,
            world_size=world.size,
            grad_accum=config.grad_accum,
        )
        eval_set = PackedBatches(val_file, config.seq_len, config.batch_size, seed=config.seed)
        hf_config = {k: v for k, v in to_hf_config(model_config).items() if k != "torch_dtype"}
        fingerprint = {
            "model": hf_config,
            "tokenizer": train_file.manifest["tokenizer_sha256"],
            "data": {k: train_file.manifest[k] for k in ("sources", "train_tokens", "val_tokens")},
        }
        trainer = Trainer(
            model,
            config,
            train_batch=lambda s, m: _as_dict(batches.batch(s, m)),
            eval_batches=[_as_dict(b) for b in _eval_batches(eval_set, config.eval_batches * world.size)],
            world=world,
            tokenizer=tok,
            fingerprint=fingerprint,
            sample_prompt=_sample_prompt(tok, val_file),
        )
        return trainer.fit()
    finally:
        shutdown(world)


def _as_dict(batch) -> dict:
    input_ids, labels = batch
    return {"input_ids": input_ids, "labels": labels}


def _eval_batches(eval_set, n: int) -> list:
    # n scales with the number of processes, so the validation windows depend only on the global batch.
    n = min(n, eval_set.token_file.num_windows(eval_set.seq_len) // eval_set.batch_size)
    return eval_set.eval_batches(max(n, 1))


def _sample_prompt(tok, val_file) -> str:
    """The first few tokens of the validation text: a prompt in the corpus's own style."""
    ids = [int(i) for i in val_file.tokens[:6] if int(i) not in tok.all_special_ids]
    return tok.decode(ids) or "\n"


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple
