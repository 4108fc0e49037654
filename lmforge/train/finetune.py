"""`lmforge finetune --task classification`: a pretrained model plus a new classification head, trained
end to end on labelled text (Devlin et al. 2019, section 4.1), and `evaluate` / `classify` with the result.

The data is a CSV or JSON Lines file of text and label (lmforge/data/tasks/classification.py), or the
built-in `stdlib-package` task. The loss is the cross-entropy of the head's logits, one term per row,
plugged into the one training loop; each evaluation adds accuracy and macro-F1 on the validation set and
keeps the best model (by `--metric`) in OUT/best. The final model is a `*ForSequenceClassification`
checkpoint with the label names in its config, written to OUT with the tokenizer.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.device import default_device, print0, seed_everything
from lmforge.errors import LmforgeError
from lmforge.train.distributed import barrier, init_world, shutdown
from lmforge.train.loop import TrainConfig, Trainer

TASKS = ("classification",)
BUILTIN_TASK = "stdlib-package"
_DATA_SUFFIXES = (".csv", ".jsonl", ".json")
_VALIDATION_NAMES = ("validation", "val", "dev")


@dataclass
class FinetuneConfig(TrainConfig):
    out: str = "runs/finetune"  # the run directory: checkpoints, metrics, the fine-tuned model
    max_steps: int = 300  # optimizer steps to train for
    batch_size: int = 16  # rows per micro-batch, per process
    lr: float = 5e-5  # peak learning rate (AdamW)
    warmup_steps: int = 30  # linear warmup steps
    weight_decay: float = 0.01  # AdamW weight decay (never on norms, biases, embeddings)
    eval_every: int = 100  # evaluate on the validation set every N steps
    model: str = ""  # the pretrained checkpoint directory (lmforge or Hugging Face)
    task: str = "classification"  # what to fine-tune for: classification
    data: str | None = (
        None  # a train file (CSV/JSONL) or a directory with train.* and validation.*; default: the built-in stdlib-package task
    )
    validation: str | None = (
        None  # the validation file (default: validation.* next to the train file, else every 10th row)
    )
    text_column: str = "text"  # the column holding the text
    text_pair_column: str | None = None  # the column holding a second text (sentence pairs)
    label_column: str = "label"  # the column holding the label
    max_length: int = 128  # tokens per example, special tokens included (longer texts are cut)
    metric: str = "accuracy"  # the validation metric that picks OUT/best: accuracy or macro_f1
    device: str | None = None  # cpu, cuda, cuda:1, mps (default: the best available)

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise LmforgeError("--model is required: the pretrained checkpoint directory to fine-tune")
        if self.task not in TASKS:
            raise LmforgeError(
                f"finetune does not do task {self.task!r} yet; choose one of: {', '.join(TASKS)}"
            )
        if self.metric not in ("accuracy", "macro_f1"):
            raise LmforgeError(f"unknown --metric {self.metric!r}; choose accuracy or macro_f1")
        if self.max_length < 3:
            raise LmforgeError(f"--max-length must be at least 3, got {self.max_length}")


def classification_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of the logits, number of rows): the loop normalises over the global batch."""
    logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
    return loss, torch.tensor(batch["labels"].numel(), device=logits.device)


def data_files(config: FinetuneConfig, is_main: bool = True) -> tuple[Path, Path | None]:
    """(train file, validation file or None): the given ones, or the built-in task under OUT/data."""
    if config.data is None:
        from lmforge.data.tasks import write_task

        out = Path(config.out) / "data"
        if is_main and not (out / "summary.json").is_file():
            write_task(BUILTIN_TASK, out)
        return out / "train.jsonl", out / "validation.jsonl"
    data = Path(config.data)
    if data.is_dir():
        train = _find_file(data, ("train",))
        if train is None:
            raise LmforgeError(f"{data} has no train.csv or train.jsonl; pass the training file as --data")
        validation = _find_file(data, _VALIDATION_NAMES)
    elif data.is_file():
        train, validation = data, None
    else:
        raise LmforgeError(f"--data {data} does not exist; pass a CSV/JSONL file or a directory of them")
    if config.validation is not None:
        validation = Path(config.validation)
        if not validation.is_file():
            raise LmforgeError(f"--validation {validation} does not exist; pass a CSV/JSONL file")
    return train, validation


def _find_file(directory: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for suffix in _DATA_SUFFIXES:
            if (directory / f"{stem}{suffix}").is_file():
                return directory / f"{stem}{suffix}"
    return None


def load_classifier(path: str, label_map):
    """The checkpoint at `path` with a new head for `label_map` (kept as is if it already has those labels)."""
    import lmforge
    from lmforge.models import SequenceClassifier

    model = lmforge.load_model(path)
    if isinstance(model, SequenceClassifier):
        if model.labels.id2label == label_map.id2label:
            return model
        model = model.base
    if getattr(model, "is_encoder_decoder", False) or not hasattr(model, "embed"):
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise LmforgeError(
            f"{path} is a {kind} model, which cannot be fine-tuned for classification yet; "
            "use a BERT, GPT-2 or Llama checkpoint"
        )
    return SequenceClassifier.from_base(model, id2label=label_map.id2label, label2id=label_map.label2id)


def _with_pad_id(model, tok):
    """A decoder classifier finds each row's last token by the pad id: give its config one."""
    import dataclasses

    if model.config.pad_token_id is None:
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        model.config = model.base.config = dataclasses.replace(model.config, pad_token_id=pad)
    return model


class RowBatches:
    """Batch (step, micro) of each process: rows drawn without replacement from one seeded shuffle
    per epoch, a pure function of (seed, step, micro, rank), so `--resume` continues exactly."""

    def __init__(
        self,
        features: list[dict],
        pad_id: int | None,
        *,
        batch_size: int,
        grad_accum: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.features, self.pad_id, self.seed = features, pad_id, seed
        self.batch_size, self.grad_accum, self.rank, self.world_size = (
            batch_size,
            grad_accum,
            rank,
            world_size,
        )

    @functools.lru_cache(maxsize=2)  # noqa: B019 (a batch spans at most two epochs)
    def _order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.features), generator=generator)

    def batch(self, step: int, micro: int) -> dict:
        from lmforge.data.tasks import pad_batch

        first = ((step * self.grad_accum + micro) * self.world_size + self.rank) * self.batch_size
        n = len(self.features)
        rows = [self.features[int(self._order(i // n)[i % n])] for i in range(first, first + self.batch_size)]
        return pad_batch(rows, self.pad_id)


class ClassifierTrainer(Trainer):
    """The loop, whose evaluations also report accuracy and macro-F1 and keep the best model in OUT/best."""

    def __init__(self, *args, label_names: list[str], metric: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_names, self.metric = label_names, metric
        best = self.out / "best" / "metrics.json"
        self.best = json.loads(best.read_text())[metric] if self.config.resume and best.is_file() else None

    @torch.no_grad()
    def evaluate(self) -> dict:
        row = super().evaluate()
        if not self.eval_set:
            return row
        # Every process predicts the whole (small) validation set: the same numbers everywhere, FSDP included.
        self.model.eval()
        predicted, gold = [], []
        for batch in self.eval_set:
            batch = self._to_device(batch)
            with self.autocast():
                logits = self.model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            predicted += logits.argmax(-1).tolist()
            gold += batch["labels"].tolist()
        self.model.train()
        metrics = validation_metrics(predicted, gold, self.label_names)
        row.update({f"val_{k}": metrics[k] for k in ("accuracy", "macro_f1")})
        if self.world.is_main and (self.best is None or metrics[self.metric] > self.best):
            self.best = metrics[self.metric]
            self._save_model(self.out / "best", None)
            write_metrics(metrics, self.out / "best" / "metrics.json")
        barrier(self.world)
        return row


def validation_metrics(predicted: list[int], gold: list[int], label_names: list[str]) -> dict:
    """Classification metrics (eval/metrics.py) over label names, for predicted and gold ids."""
    from lmforge.eval.metrics import compute_metrics

    names = [label_names[i] for i in predicted], [label_names[i] for i in gold]
    return compute_metrics("classification", *names, labels=label_names)


def write_metrics(metrics: dict, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2) + "\n")
    except OSError as e:
        raise LmforgeError(f"cannot write {path}: {e.strerror}; choose a writable directory") from None


def _read_split(config: FinetuneConfig, path: Path):
    from lmforge.data.tasks import read_classification

    return read_classification(
        path,
        text_column=config.text_column,
        text_pair_column=config.text_pair_column,
        label_column=config.label_column,
    )


def _examples(config: FinetuneConfig, train_file: Path, validation_file: Path | None):
    """(train examples, validation examples, label map); without a validation file every 10th row is held out."""
    from lmforge.data.tasks import LabelMap

    train = _read_split(config, train_file)
    if validation_file is None:
        train, validation = [e for i, e in enumerate(train) if i % 10], train[::10]
        if not train:
            raise LmforgeError(
                f"{train_file} has too few rows to hold out a validation set; pass --validation"
            )
    else:
        validation = _read_split(config, validation_file)
    return train, validation, LabelMap.from_examples(train)


def finetune(config: FinetuneConfig) -> dict:
    """Fine-tune; returns the validation metrics of the final model (also in OUT/metrics.json)."""
    from lmforge.data.tasks import encode_classification, pad_batch
    from lmforge.tokenizers import load_tokenizer

    world = init_world(torch.device(config.device) if config.device else default_device())
    try:
        if world.is_main:
            Path(config.out).mkdir(parents=True, exist_ok=True)
        files = data_files(config, world.is_main)
        barrier(world)  # rank 0 writes the built-in task's files
        train, validation, label_map = _examples(config, *files)
        tok = load_tokenizer(config.model)
        seed_everything(config.seed)
        model = _with_pad_id(load_classifier(config.model, label_map), tok)
        pad_id = model.config.pad_token_id
        encode = functools.partial(
            encode_classification, tok, label_map=label_map, max_length=config.max_length
        )
        train_features, val_features = encode(train), encode(validation)
        print0(
            f"fine-tuning {config.model} ({model.num_params() / 1e6:.2f}M parameters) on {len(train):,} "
            f"examples, {len(label_map)} labels ({', '.join(label_map.names)}); validating on {len(validation):,}"
        )
        batches = RowBatches(
            train_features,
            pad_id,
            batch_size=config.batch_size,
            grad_accum=config.grad_accum,
            seed=config.seed,
            rank=world.rank,
            world_size=world.size,
        )
        evals = [
            pad_batch(val_features[i : i + config.batch_size], pad_id)
            for i in range(0, len(val_features), config.batch_size)
        ]
        fingerprint = {
            "model": str(Path(config.model).resolve()),
            "labels": label_map.names,
            "data": {"train": len(train), "validation": len(validation), "max_length": config.max_length},
        }
        trainer = ClassifierTrainer(
            model,
            config,
            train_batch=batches.batch,
            eval_batches=evals,
            world=world,
            tokenizer=tok,
            loss_fn=classification_loss,
            fingerprint=fingerprint,
            label_names=label_map.names,
            metric=config.metric,
        )
        row = trainer.fit()
        if not row:
            return {}
        predicted = predict(trainer.raw_model, val_features, pad_id, config.batch_size)
        metrics = validation_metrics(predicted, [f["labels"] for f in val_features], label_map.names)
        if world.is_main:
            write_metrics(metrics, Path(config.out) / "metrics.json")
        return metrics
    finally:
        shutdown(world)


@torch.no_grad()
def predict(model, features: list[dict], pad_id: int | None, batch_size: int = 32) -> list[int]:
    """The predicted label id of each feature row."""
    from lmforge.data.tasks import pad_batch

    model.eval()
    predicted = []
    for i in range(0, len(features), batch_size):
        batch = {k: v.to(model.device) for k, v in pad_batch(features[i : i + batch_size], pad_id).items()}
        logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        predicted += logits.argmax(-1).tolist()
    return predicted


def load_trained_classifier(path: str, device=None):
    """(classifier, tokenizer) of a fine-tuned checkpoint; anything else is a one-line error."""
    import lmforge
    from lmforge.models import SequenceClassifier

    model = lmforge.load_model(path, device=device or default_device())
    if not isinstance(model, SequenceClassifier):
        raise LmforgeError(
            f"{path} is not a sequence classifier ({type(model).__name__}); "
            "fine-tune one first with `lmforge finetune --task classification`"
        )
    tok = lmforge.load_tokenizer(path)
    return _with_pad_id(model, tok), tok


def evaluate_classifier(
    model_dir: str,
    data: str,
    *,
    max_length: int = 512,
    batch_size: int = 32,
    text_column: str = "text",
    label_column: str = "label",
) -> dict:
    """Classification metrics of a fine-tuned model on a labelled CSV/JSONL file."""
    from lmforge.data.tasks import LabelMap, encode_classification, read_classification
    from lmforge.eval.metrics import unknown_label_error

    model, tok = load_trained_classifier(model_dir)
    examples = read_classification(data, text_column=text_column, label_column=label_column)
    names = [model.labels.id2label[i] for i in range(model.labels.num_labels)]
    for e in examples:
        if e.label not in names:
            line = int(e.where.rsplit(":", 1)[-1]) if e.where.rsplit(":", 1)[-1].isdigit() else 0
            raise unknown_label_error(e.label, line, names, data)
    features = encode_classification(tok, examples, LabelMap(names), max_length=max_length)
    predicted = predict(model, features, model.config.pad_token_id, batch_size)
    return validation_metrics(predicted, [f["labels"] for f in features], names)


def classify_texts(
    model_dir: str, texts: list[str], *, max_length: int = 512, batch_size: int = 32
) -> list[str]:
    """The predicted label name of each text."""
    model, tok = load_trained_classifier(model_dir)
    features = []
    for i in range(0, len(texts), batch_size):
        enc = tok.encode_inputs(texts[i : i + batch_size], max_length=max_length)
        for j, mask in enumerate(enc["attention_mask"]):
            n = sum(mask)
            features.append({k: enc[k][j][:n] for k in ("input_ids", "token_type_ids", "attention_mask")})
    return [model.labels.id2label[i] for i in predict(model, features, model.config.pad_token_id, batch_size)]
