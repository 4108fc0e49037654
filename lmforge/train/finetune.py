"""`lmforge finetune`: a pretrained model (lmforge's or a Hugging Face checkpoint) trained further on a
task's labelled data, fully or with LoRA adapters, on the one training loop.

Each task (lmforge/train/tasks/) reads its data, builds its model, and defines its loss and metrics; this
module does the rest alike for all: the data files (or the task's built-in data under OUT/data), seeded
batches that resume exactly, LoRA, a validation score every `--eval-every` steps that keeps the best model
(by `--metric`) in OUT/best, early stopping after `--patience` evaluations without improvement, and the
final model in OUT with its validation metrics in OUT/metrics.json.

With `--method lora` only the adapters and the task's new head train. Checkpoints then hold the adapter
alone (PEFT layout); OUT and OUT/best hold the merged model, which every lmforge command and
`transformers` open, and the adapter itself in OUT/adapter (and OUT/best/adapter), which `peft` opens.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.config import INT64, option
from lmforge.device import check_device, check_precision, print0, seed_everything
from lmforge.errors import LmforgeError
from lmforge.train.distributed import barrier, init_world, shutdown
from lmforge.train.loop import MAX_SIZE, TrainConfig, Trainer
from lmforge.train.tasks import TASKS, ClassificationOptions, QAOptions, Seq2SeqOptions, get_task

_VALIDATION_NAMES = ("validation", "val", "dev")
# The peak learning rate when --lr is not given: a full fine-tune's, as BERT's paper tunes in (2e-5 to
# 5e-5); LoRA's at the top of what PEFT users train adapters with (1e-4 to 1e-3); seq2seq's as T5 is
# fine-tuned (1e-3), which a small model needs to learn at all. Chosen by runs on small data: LoRA on
# all-MiniLM-L6-v2 stayed at chance for 3 epochs at 3e-4 and reached 1.0 at 1e-3; a tiny T5 scored
# ROUGE-L 0.03 at 5e-5, 0.24 at 3e-4, 0.975 at 1e-3 (tests/train/test_defaults_learn.py keeps them).
DEFAULT_LR = {"full": 5e-5, "lora": 1e-3}
DEFAULT_TASK_LR = {("seq2seq", "full"): 1e-3}
DEFAULT_EPOCHS = 3  # the training length when neither --max-steps nor --epochs is given


def default_lr(task: str, method: str) -> float:
    """The peak learning rate of `task` fine-tuned by `method` when --lr is not given."""
    return DEFAULT_TASK_LR.get((task, method), DEFAULT_LR[method])


# Fields of the loop's config that fine-tuning does not use: fixed here, so they are neither flags nor
# recipe keys (seq_len still goes into the data-order fingerprint, as it always has).
_LOOP_ONLY = {"seq_len": 256, "eval_batches": 10, "sample_tokens": 0}


def _loop_only(name: str):
    return field(default=_LOOP_ONLY[name], init=False, repr=False)


@dataclass
class FinetuneConfig(ClassificationOptions, QAOptions, Seq2SeqOptions, TrainConfig):
    """A fine-tuning run: the loop's settings, the model, LoRA, and every task's options (declared once,
    in the task's options class, so `evaluate`, `classify` and `answer` share their defaults)."""

    out: str = option("runs/finetune", "the run directory: checkpoints, metrics, the fine-tuned model")
    max_steps: int | None = option(None, "optimizer steps to train for (default: --epochs 3)", ge=1, lt=INT64)
    epochs: float | None = option(
        None, "passes over the training rows, instead of --max-steps (default: 3)", gt=0, le=10**6
    )
    batch_size: int = option(16, "rows per micro-batch, per process", ge=1, le=MAX_SIZE)
    lr: float | None = option(
        None, "peak learning rate (AdamW; default: 5e-5, or 1e-3 for LoRA and for seq2seq)", gt=0
    )
    warmup_steps: int = option(30, "linear warmup steps (at most a tenth of --max-steps)", ge=0, lt=INT64)
    weight_decay: float = option(0.01, "AdamW weight decay (never on norms, biases, embeddings)", ge=0)
    eval_every: int = option(100, "score the validation set every N steps", ge=1, lt=INT64)
    seq_len: int = _loop_only("seq_len")
    eval_batches: int = _loop_only("eval_batches")
    sample_tokens: int = _loop_only("sample_tokens")
    model: str = option("", "the pretrained checkpoint directory (lmforge or Hugging Face)")
    allow_nonfinite: bool = option(
        False, "load a --model with NaN or Inf weights (with a warning), to inspect it"
    )
    task: str = option("classification", f"what to fine-tune for: {', '.join(TASKS)}")
    data: str | None = option(
        None,
        "a train file or a directory with train.* and validation.*; default: the task's built-in data",
    )
    validation: str | None = option(
        None, "the validation file (default: validation.* next to the train file, else every 10th example)"
    )
    method: str = option(
        "full", "full (every weight trains) or lora (low-rank adapters and the new head only)"
    )
    dropout: float | None = option(None, "dropout while fine-tuning (default: the model's own)", ge=0, lt=1)
    lora_r: int = option(8, "LoRA rank", ge=1, le=2**16)
    lora_alpha: float = option(16.0, "LoRA scaling numerator (the update is scaled by alpha / r)", gt=0)
    lora_dropout: float = option(0.05, "dropout on the LoRA input", ge=0, lt=1)
    lora_targets: str | None = option(
        None, "comma-separated layer names to adapt (default: the task's, q_proj,v_proj)"
    )
    metric: str | None = option(
        None, "the validation metric that picks OUT/best and drives --patience (default: the task's first)"
    )
    patience: int = option(
        0, "stop after this many evaluations without a better --metric (0: never stop early)", ge=0, lt=INT64
    )
    max_eval_examples: int = option(
        0,
        "validation examples scored at each evaluation (0: all; the final score uses all)",
        ge=0,
        lt=INT64,
    )
    device: str | None = option(None, "cpu, cuda, cuda:1, mps (default: the best available)")

    def __post_init__(self):
        if self.max_steps is None and self.epochs is None:
            self.epochs = DEFAULT_EPOCHS
        super().__post_init__()
        if not self.model:
            raise LmforgeError("--model is required: the pretrained checkpoint directory to fine-tune")
        if self.task not in TASKS:
            raise LmforgeError(f"unknown --task {self.task!r}; choose one of: {', '.join(TASKS)}")
        task = get_task(self.task)
        self.metric = self.metric or task.metrics[0]
        if self.metric not in task.metrics:
            raise LmforgeError(
                f"--metric {self.metric!r} is not a {self.task} metric; choose one of: {', '.join(task.metrics)}"
            )
        if self.method not in ("full", "lora"):
            raise LmforgeError(f"unknown --method {self.method!r}; choose full or lora")
        if self.lr is None:
            self.lr = default_lr(self.task, self.method)
        if self.method == "lora" and self.fsdp:
            raise LmforgeError("--method lora trains too few weights to shard; drop --fsdp (DDP is used)")


def _fit_max_length(config: FinetuneConfig, model) -> None:
    """Cut --max-length to the model's position table (BERT's 512), which a longer input would index
    past; a T5's relative positions have no such limit."""
    if getattr(model, "is_encoder_decoder", False):
        return
    base = getattr(model, "base", model)  # a task model's encoder or decoder
    limit = getattr(base, "max_positions", None) or model.config.max_seq_len
    if config.max_length > limit:
        print0(f"--max-length {config.max_length} is more than the model's {limit} positions: using {limit}")
        config.max_length = limit


def data_files(config: FinetuneConfig, task, is_main: bool = True) -> tuple[Path, Path | None]:
    """(train file, validation file or None): the given ones, or the task's built-in data under OUT/data."""
    if config.data is None:
        from lmforge.data.tasks import write_task

        if task.builtin is None:
            raise LmforgeError(f"--task {task.name} has no built-in data; pass --data")
        out = Path(config.out) / "data"
        if is_main and not (out / "summary.json").is_file():
            write_task(task.builtin, out)
        return out / _data_name(out, "train", task), out / _data_name(out, "validation", task)
    data = Path(config.data)
    if data.is_dir():
        train = _find_file(data, ("train",), task.suffixes)
        if train is None:
            kinds = "/".join(s.lstrip(".") for s in task.suffixes)
            raise LmforgeError(f"{data} has no train file ({kinds}); pass the training file as --data")
        validation = _find_file(data, _VALIDATION_NAMES, task.suffixes)
    elif data.is_file():
        train, validation = data, None
    else:
        raise LmforgeError(f"--data {data} does not exist; pass a data file or a directory of them")
    if config.validation is not None:
        validation = Path(config.validation)
        if not validation.is_file():
            raise LmforgeError(f"--validation {validation} does not exist; pass a data file")
    return train, validation


def _data_name(directory: Path, stem: str, task) -> str:
    """The built-in data's file name: written by rank 0, so it may not exist yet on other processes."""
    return next(
        (f"{stem}{s}" for s in task.suffixes if (directory / f"{stem}{s}").is_file()), f"{stem}.jsonl"
    )


def _find_file(directory: Path, stems: tuple[str, ...], suffixes: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in suffixes:
            if (directory / f"{stem}{suffix}").is_file():
                return directory / f"{stem}{suffix}"
    return None


class RowBatches:
    """batch_size rows from a global sample index on: rows drawn without replacement from one seeded
    shuffle per epoch, a pure function of (seed, sample), so `--resume` continues exactly."""

    def __init__(self, features: list[dict], pad_id: int | None, *, batch_size: int, seed: int):
        self.features, self.pad_id, self.batch_size, self.seed = features, pad_id, batch_size, seed

    @functools.lru_cache(maxsize=2)  # noqa: B019 (a batch spans at most two epochs)
    def _order(self, epoch: int) -> torch.Tensor:
        # NOTE: torch takes 64 bits; a large --seed times the multiplier would overflow them
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return torch.randperm(len(self.features), generator=generator)

    def samples(self, first: int) -> dict:
        from lmforge.data.tasks import pad_batch

        n = len(self.features)
        rows = [self.features[int(self._order(i // n)[i % n])] for i in range(first, first + self.batch_size)]
        return pad_batch(rows, self.pad_id)


class TaskTrainer(Trainer):
    """The loop, whose evaluations also score the task's metrics, keep the best model in OUT/best and
    stop early; with LoRA it saves adapters in checkpoints and the merged model for use."""

    def __init__(self, model, config: FinetuneConfig, *, task, validation: tuple[list, list], **kwargs):
        self.task, self.lora = task, config.method == "lora"
        self.reports_perplexity = task.is_token_loss
        self.validation = validation  # (examples, features)
        super().__init__(model, config, loss_fn=task.loss, **kwargs)
        self.metric, self.patience = config.metric, config.patience
        saved = self.resumed_state.get("task", {})
        self.best, self.evals_since_best = saved.get("best"), saved.get("evals_since_best", 0)

    def load_model_weights(self, path: Path) -> None:
        if not self.lora:
            return super().load_model_weights(path)
        from lmforge.hf.peft import load_adapter

        load_adapter(self.raw_model, path)  # the adapters are in place: this loads their weights

    def task_state(self) -> dict:
        return {"task": {"best": self.best, "evals_since_best": self.evals_since_best}}

    @torch.no_grad()
    def evaluate(self) -> dict:
        row = super().evaluate()
        examples, features = self.validation
        if self.config.max_eval_examples:
            examples, features = _first(examples, features, self.config.max_eval_examples)
        # Every process scores the whole (small) validation set: the same numbers everywhere, FSDP included.
        metrics = {**self.task.score(self.raw_model, self.tokenizer, examples, features), **row}
        scored = {k: v for k, v in metrics.items() if k in self.task.metrics and not k.startswith("val_")}
        row.update({f"val_{k}": v for k, v in scored.items() if isinstance(v, float)})
        value = metrics[self.metric]
        better = self.best is None or (
            value < self.best if self.metric in self.task.lower_is_better else value > self.best
        )
        if better:
            self.best, self.evals_since_best = value, 0
            if self.world.is_main:
                self.save_final_model(self.out / "best")
                write_metrics(metrics, self.out / "best" / "metrics.json")
        else:
            self.evals_since_best += 1
            if self.patience and self.evals_since_best >= self.patience:
                self.stop_requested = True
                print0(
                    f"stopping early: {self.metric} has not improved on {self.best:.4f} "
                    f"for {self.evals_since_best} evaluations (--patience {self.patience})"
                )
        barrier(self.world)
        return row

    def _save_model(self, directory: Path, state_dict: dict | None) -> None:
        if not self.lora:
            return super()._save_model(directory, state_dict)
        from lmforge.hf.peft import save_adapter

        save_adapter(self.raw_model, directory, base_model_name_or_path=self.config.model)
        self.tokenizer.save_pretrained(directory)

    def save_final_model(self, directory: Path) -> None:
        """The model for use: as trained, or with LoRA merged (and the adapter in directory/adapter)."""
        if not self.lora:
            return self._save_model(directory, None)
        from lmforge.nn.lora import merge_lora

        self._save_model(directory / "adapter", None)
        merged = merge_lora(copy.deepcopy(self.raw_model))
        merged.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def export_model(self, latest: Path) -> None:
        if not self.lora:
            return super().export_model(latest)
        self.save_final_model(self.out)  # the last checkpoint's weights are the model's own now


def _first(examples: list, features: list[dict], n: int) -> tuple[list, list[dict]]:
    """The first n examples and their features (one each, or several windows each with `example_index`)."""
    if len(features) == len(examples):
        return examples[:n], features[:n]
    return examples[:n], [f for f in features if f.get("example_index", 0) < n]


def write_metrics(metrics: dict, path: Path) -> None:
    """The metrics as JSON at path; a classifier's confusion matrix also as a picture beside it
    (`confusion_png_path`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2) + "\n")
    except OSError as e:
        raise LmforgeError(f"cannot write {path}: {e.strerror}; choose a writable directory") from None
    if "confusion_matrix" in metrics:
        from lmforge.eval.plot import write_confusion_png

        confusion = metrics["confusion_matrix"]
        write_confusion_png(confusion["counts"], confusion_png_path(path), confusion["labels"])


def confusion_png_path(metrics_path: Path) -> Path:
    """Where the confusion matrix of a metrics file is drawn: metrics.json -> metrics-confusion.png."""
    return metrics_path.with_name(f"{metrics_path.stem}-confusion.png")


def _examples(task, train_file: Path, validation_file: Path | None) -> tuple[list, list]:
    train = task.read(train_file)
    if validation_file is None:
        return task.hold_out(train, train_file)
    return train, task.read(validation_file)


def _schedule_line(config: FinetuneConfig, n_rows: int, world_size: int) -> str:
    """How long and how fast the run trains, and where the numbers come from."""
    steps = f"{config.max_steps:,} steps"
    if config.epochs is not None:
        global_batch = config.batch_size * config.grad_accum * world_size
        steps += f" ({config.epochs:g} epochs of {n_rows:,} rows, {global_batch} a step)"
    is_default = config.lr == default_lr(config.task, config.method)
    source = f", the {config.task} {config.method} default; --lr sets another" if is_default else ""
    return f"training for {steps}; peak learning rate {config.lr:g}{source}"


def _apply_lora(config: FinetuneConfig, task, model) -> None:
    from lmforge.hf.peft import apply_lora_for_peft
    from lmforge.nn.lora import count_trainable

    targets = [t.strip() for t in (config.lora_targets or task.lora_targets).split(",") if t.strip()]
    targets = apply_lora_for_peft(
        model,
        targets,
        config.lora_r,
        config.lora_alpha,
        config.lora_dropout,
        trainable=task.trainable_modules(model),
    )
    trained, total = count_trainable(model), sum(p.numel() for p in model.parameters())
    print0(f"LoRA on {', '.join(targets)}: {trained:,} of {total:,} parameters train ({trained / total:.2%})")


def finetune(config: FinetuneConfig) -> dict:
    """Fine-tune; returns the validation metrics of the final model (also in OUT/metrics.json)."""
    from lmforge.tokenizers import load_tokenizer

    task = get_task(config.task)(config)
    world = init_world(check_device(config.device))
    try:
        check_precision(config.precision, world.device)  # before any data work
        if world.is_main:
            Path(config.out).mkdir(parents=True, exist_ok=True)
        files = data_files(config, task, world.is_main)
        barrier(world)  # rank 0 writes the built-in task's files
        train, validation = _examples(task, *files)
        tok = load_tokenizer(config.model)
        model = _task_model(config, task, tok, train)
        trainer = _task_trainer(config, task, model, tok, (train, validation), world)
        if not trainer.fit():
            return {}
        metrics = task.score(trainer.raw_model, tok, *trainer.validation)
        if world.is_main:
            write_metrics(metrics, Path(config.out) / "metrics.json")
        return metrics
    finally:
        shutdown(world)


def _task_model(config: FinetuneConfig, task, tok, train: list):
    """The task's model, seeded, --max-length fitted to it and --dropout set."""
    seed_everything(config.seed)
    model = task.build_model(tok, train)
    _fit_max_length(config, model)
    if config.dropout is not None:  # before LoRA, whose adapters keep their own --lora-dropout
        model.set_dropout(config.dropout)
    return model


def _task_trainer(
    config: FinetuneConfig, task, model, tok, examples: tuple[list, list], world
) -> TaskTrainer:
    """The loop over the task's encoded rows, with LoRA applied and the run's length known."""
    from lmforge.data.tasks import pad_batch

    train, validation = examples
    pad_id = next(
        (i for i in (model.config.pad_token_id, tok.pad_token_id, tok.eos_token_id) if i is not None), None
    )
    train_features = task.encode(tok, train, training=True)
    val_features = task.encode(tok, validation, training=False)
    print0(
        f"fine-tuning {config.model} ({model.num_params() / 1e6:.2f}M parameters) for {config.task} on "
        + task.describe(train, validation)
    )
    if config.method == "lora":
        _apply_lora(config, task, model)
    config.steps_for_epochs(len(train_features), world.size)
    print0(_schedule_line(config, len(train_features), world.size))
    loss_features = task.encode(tok, validation, training=True)
    return TaskTrainer(
        model,
        config,
        task=task,
        validation=(validation, val_features),
        train_batch=RowBatches(
            train_features, pad_id, batch_size=config.batch_size, seed=config.seed
        ).samples,
        eval_batches=[
            pad_batch(loss_features[i : i + config.batch_size], pad_id)
            for i in range(0, len(loss_features), config.batch_size)
        ],
        world=world,
        tokenizer=tok,
        fingerprint=_fingerprint(config, task, train, validation),
    )


def _fingerprint(config: FinetuneConfig, task, train: list, validation: list) -> dict:
    """What a resumed run must share with the one it continues."""
    return {
        "model": str(Path(config.model).resolve()),
        "task": config.task,
        "method": config.method,
        "data": {"train": len(train), "validation": len(validation), "max_length": config.max_length},
        **task.fingerprint(),
    }
