"""The one training loop. Pretraining, fine-tuning and every objective plug into it.

Each optimizer step: fetch the step's micro-batches, normalise the loss by the number of real
tokens in the whole global batch (so accumulation and data parallelism give the gradients of one
big batch), clip, step AdamW with a warmup-cosine learning rate; then log, evaluate, sample and
checkpoint on schedule. Batches are a pure function of (step, micro-batch), and every RNG state is
checkpointed, so `--resume` continues bit for bit.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmforge.config import INT64, bounded, check_fields
from lmforge.device import choose_precision, print0
from lmforge.errors import LmforgeError
from lmforge.models.base import evaluating
from lmforge.train import checkpoint as ckpt
from lmforge.train.distributed import (
    World,
    all_reduce_sum,
    barrier,
    from_rank0,
    no_sync,
    unwrap,
    wrap_model,
)
from lmforge.train.loss import IGNORE_INDEX, causal_lm_loss
from lmforge.train.optim import lr_at, make_optimizer
from lmforge.train.report import EvaluationReport, progress_bar

# The largest batch, accumulation or sequence length: far beyond any run, far below an overflow.
MAX_SIZE = 2**20


@dataclass
class TrainConfig:
    # Fields that say the same thing two ways: a flag for one replaces a recipe's key for the other.
    ALTERNATIVES = (("max_steps", "epochs"),)

    out: str = "runs/lm"  # the run directory: checkpoints, metrics.jsonl, loss.png, the final model
    max_steps: int | None = bounded(
        None, ge=1, lt=INT64
    )  # optimizer steps to train for (default: 1000, unless --epochs is given)
    epochs: float | None = bounded(
        None, gt=0, le=10**6
    )  # passes over the training data, instead of --max-steps (0.5: half of one)
    batch_size: int = bounded(8, ge=1, le=MAX_SIZE)  # sequences per micro-batch, per process
    grad_accum: int = bounded(1, ge=1, le=MAX_SIZE)  # micro-batches per optimizer step
    seq_len: int = bounded(256, ge=1, le=MAX_SIZE)  # tokens per training sequence
    lr: float = bounded(1e-3, gt=0)  # peak learning rate (AdamW)
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)  # the cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = bounded(100, ge=0, lt=INT64)  # linear warmup steps (at most a tenth of --max-steps)
    weight_decay: float = bounded(0.1, ge=0)  # AdamW weight decay (never on norms, biases, embeddings)
    grad_clip: float = bounded(1.0, ge=0)  # clip the global gradient norm to this (0: no clipping)
    eval_every: int = bounded(100, ge=1, lt=INT64)  # evaluate (validation loss and a sample) every N steps
    eval_batches: int = bounded(10, ge=1, lt=INT64)  # validation batches per evaluation
    save_every: int = bounded(500, ge=1, lt=INT64)  # write a checkpoint every N steps (and at the end)
    keep_last: int = bounded(3, ge=1, lt=INT64)  # checkpoints to keep (the newest)
    sample_tokens: int = bounded(
        48, ge=0, lt=INT64
    )  # tokens generated as a sample at each evaluation (0: none)
    seed: int = bounded(1337, ge=0, lt=INT64)  # seeds the model init, data order and sampling
    precision: str = "auto"  # auto (the fastest, measured on a CPU), float32, bfloat16, float16 (CUDA)
    compile: bool = False  # torch.compile the model
    skip_nonfinite: bool = False  # skip a step with a non-finite loss or gradient instead of stopping
    tensorboard: bool = False  # also log to OUT/tensorboard (needs tensorboard installed)
    resume: bool = False  # continue from the latest complete checkpoint in OUT
    force: bool = False  # resume even if the model, tokenizer or data changed
    fsdp: bool = False  # under torchrun, shard parameters with FSDP2 instead of DDP
    max_minutes: float = bounded(0.0, ge=0)  # stop (and save) after this long; 0 means no limit
    progress: bool = True  # show the progress bar

    def __post_init__(self):
        check_fields(self)
        if self.max_steps is not None and self.epochs is not None:
            raise LmforgeError(
                f"pass --max-steps or --epochs, not both (got {self.max_steps} steps and {self.epochs} "
                "epochs, from flags or recipe keys)"
            )
        if self.max_steps is None and self.epochs is None:
            self.max_steps = 1000

    def steps_for_epochs(self, samples_per_epoch: int, world_size: int) -> None:
        """Set max_steps from --epochs: the steps whose global batches pass over the data that often.

        A pure function of the data and the batch shape, so a resumed run computes the same max_steps.
        """
        if self.epochs is None:
            return
        global_batch = self.batch_size * self.grad_accum * world_size
        self.epoch_samples = math.ceil(self.epochs * samples_per_epoch)  # kept for a --force resume
        self.max_steps = max(1, math.ceil(self.epoch_samples / global_batch))


def accumulate_gradients(
    model, micro_batches: list[dict], loss_fn, world: World, autocast=nullcontext, scaler=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backpropagate the global batch's mean token loss; returns (mean loss, global token count).

    Each micro-batch contributes sum(token losses) / (tokens in the global batch), times the world
    size because DDP averages gradients over processes. A float16 GradScaler, if given, scales it.
    """
    local = sum(_n_targets(b) for b in micro_batches)
    n_tokens = all_reduce_sum(torch.as_tensor(local, dtype=torch.float64), world)
    if n_tokens == 0:
        raise LmforgeError("a training batch has no tokens to predict; check the data")
    total = torch.zeros((), dtype=torch.float64)
    for i, batch in enumerate(micro_batches):
        with no_sync(model, i == len(micro_batches) - 1), autocast():
            loss_sum, _ = loss_fn(model, batch)
        loss = loss_sum.float() * (world.size / n_tokens.item())
        (loss if scaler is None else scaler.scale(loss)).backward()
        total += loss_sum.detach().double().cpu()
    return all_reduce_sum(total, world) / n_tokens, n_tokens


def _n_targets(batch: dict) -> torch.Tensor | int:
    """The loss terms of a batch: its labelled tokens, or one per row for a task without `labels` (QA)."""
    if "labels" in batch:
        return (batch["labels"] != IGNORE_INDEX).sum()
    return len(batch["input_ids"])


def count_input_tokens(micro_batches: list[dict], world: World) -> int:
    """The real (unpadded) input tokens of the global batch, which `tokens_per_s` counts for every task.

    NOTE: not the loss's normaliser (_n_targets), which is one per row for classification and QA.
    """
    local = sum(
        b["attention_mask"].sum() if "attention_mask" in b else b["input_ids"].numel() for b in micro_batches
    )
    local = torch.as_tensor(local, dtype=torch.float64, device=world.device)
    return int(all_reduce_sum(local, world).item())


class Trainer:
    """Runs `config.max_steps` optimizer steps of `loss_fn` over `train_batch(first_sample)` batches.

    The data position is counted in samples: step s begins at global sample `start_sample + (s -
    start_step) * G` (G = batch_size * grad_accum * processes), and micro-batch m of rank r takes
    batch_size samples from (m * processes + r) * batch_size past that. A resume that changes G
    (under --force) continues from the same sample, so no sample is skipped or repeated.
    """

    # The validation loss is a mean token cross-entropy, so exp(val_loss) is a perplexity (val_ppl);
    # a subclass whose loss is per example (classification, QA) sets it False.
    reports_perplexity = True

    def __init__(
        self,
        model,
        config: TrainConfig,
        *,
        train_batch: Callable[[int], dict],
        eval_batches: list[dict],
        world: World,
        tokenizer=None,
        loss_fn=causal_lm_loss,
        fingerprint: dict | None = None,
        sample_prompt: str | None = None,
        sample_fn: Callable | None = None,
    ):
        self.config, self.world, self.tokenizer = config, world, tokenizer
        self.train_batch, self.eval_set, self.loss_fn = train_batch, eval_batches, loss_fn
        self.fingerprint, self.sample_prompt = fingerprint or {}, sample_prompt
        # What fixes the data order and the meaning of a step: a resume must keep all of it.
        self.fingerprint["data_order"] = {
            "world_size": world.size,
            "batch_size": config.batch_size,
            "grad_accum": config.grad_accum,
            "seq_len": config.seq_len,
            "seed": config.seed,
        }
        # sample_fn(model) -> text replaces the generated continuation where the objective is not
        # next-token prediction (a masked-LM fill, a span-corruption target).
        self.sample_fn = sample_fn
        self.out = Path(config.out)
        self.raw_model = model.to(world.device)
        self._set_precision()
        self.start_step, self.start_sample = 0, 0  # where this process's run begins in the data
        self.stop_requested = False  # a subclass may ask to stop (early stopping)
        self.resumed_state: dict = {}  # the trainer_state.json resumed from, if any
        self.order_change: str | None = None  # the batch shape a --force resume changed, if any
        resume_from = self._check_out_dir()
        if resume_from is not None:
            state, optim_state, rng = ckpt.read_checkpoint(resume_from)
            self._check_fingerprint(state, resume_from)
            self.load_model_weights(resume_from)
            self.resumed_state = state
        self.model = wrap_model(self.raw_model, world, fsdp=config.fsdp)
        self.optimizer = make_optimizer(self.model, lr=config.lr, weight_decay=config.weight_decay)
        if resume_from is not None:
            self._resume_state(state, optim_state, rng)
        if config.compile:
            self.model = torch.compile(self.model, dynamic=False)

    def _set_precision(self) -> None:
        """The precision the run computes in, its autocast context and (float16) gradient scaler."""
        device = self.world.device
        # Rank 0's measurement decides for all: processes that timed a near tie apart must still agree.
        self.precision = from_rank0(
            choose_precision(self.config.precision, device, sizes=model_sizes(self.raw_model)), self.world
        )
        print0(f"precision: {self.precision}")
        dtype = self.precision.dtype
        self.autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
        # NOTE: float16's 5 exponent bits underflow small gradients: the loss is scaled up before
        # backward and the gradients down before the step (a step with inf/NaN is skipped).
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def _resume_state(self, state: dict, optim_state: dict, rng) -> None:
        """The optimizer, RNG, data position and gradient scaler of the checkpoint resumed from."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        # strict=False: a parameter that never had a gradient (an unused pooler) has no state yet,
        # exactly as in the uninterrupted run.
        set_optimizer_state_dict(
            self.raw_model, self.optimizer, optim_state, options=StateDictOptions(strict=False)
        )
        ckpt.set_rng_state(state["rng"], rng)
        self.start_step = state["step"]
        self.start_sample = self._resumed_sample(state)
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])

    def load_model_weights(self, path: Path) -> None:
        """Load the model weights of the checkpoint at `path` (to resume)."""
        from lmforge.hf.checkpoint import load_weights

        load_weights(self.raw_model, path)

    def task_state(self) -> dict:
        """What a subclass keeps in trainer_state.json beside the step (read back as `resumed_state`)."""
        return {}

    def _check_out_dir(self) -> Path | None:
        """The checkpoint to resume from, if any; refuses to overwrite another run's checkpoints."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write-test-{self.world.rank}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise LmforgeError(f"cannot write to output directory {self.out}: {e.strerror or e}") from None
        if self.world.is_main:  # a writer killed mid-save leaves a temporary directory; it is garbage
            for stale in (self.out / "checkpoints").glob(".tmp-step-*"):
                shutil.rmtree(stale, ignore_errors=True)
        latest = ckpt.latest_checkpoint(self.out)
        if latest is not None and not self.config.resume:
            raise LmforgeError(
                f"{self.out} already holds checkpoints ({latest.name}); pass --resume to continue "
                "that run, or choose another --out"
            )
        return ckpt.newest_intact_checkpoint(self.out, report=print0) if self.config.resume else None

    # What fixes the data order: the batch shape can change under --force (the position is converted
    # exactly, in samples); the sequence length and seed decide which samples exist and their order.
    CONVERTIBLE_ORDER = ("world_size", "batch_size", "grad_accum")

    def _check_fingerprint(self, state: dict, path: Path) -> None:
        """Refuse a resume that changes the model, tokenizer, data or data order, unless --force; refuse a
        changed sequence length or seed even then (either would skip or repeat samples silently)."""
        saved = state.get("fingerprint") or {}  # its type is checked by ckpt.read_trainer_state
        order_was, order_now = saved.get("data_order"), self.fingerprint["data_order"]
        if isinstance(order_was, dict) and order_was != order_now:
            moved = {
                k: f"{order_was.get(k)} -> {now}" for k, now in order_now.items() if order_was.get(k) != now
            }
            named = ", ".join(
                f"{'processes' if k == 'world_size' else '--' + k.replace('_', '-')} {v}"
                for k, v in moved.items()
            )
            fixed = [k for k in moved if k not in self.CONVERTIBLE_ORDER]
            if fixed or not self.config.force:
                advice = (
                    "--seq-len and --seed decide which samples there are and their order, so they cannot "
                    "change within a run"
                    if fixed
                    else "pass --force to continue from the same sample with the new batch shape"
                )
                raise LmforgeError(
                    f"cannot resume from {path}: the data order changed ({named}); {advice}; "
                    "or resume with that run's values, or choose another --out"
                )
            self.order_change = named
        changed = [
            k
            for k in self.fingerprint
            if k != "data_order" and k in saved and saved[k] != self.fingerprint[k]
        ]
        if changed and not self.config.force:
            raise LmforgeError(
                f"cannot resume from {path}: the {', '.join(changed)} differ from that run's; "
                "pass --force to resume anyway, or choose another --out"
            )

    def _resumed_sample(self, state: dict) -> int:
        """The global sample the resumed run continues from; says so when --force changed the batch shape."""
        position = state.get("data_position") or {}
        order = (state.get("fingerprint") or {}).get("data_order") or {}
        if "samples" in position:
            sample = position["samples"]
        else:  # a checkpoint from before data positions were recorded
            was = [order.get(k, getattr(self.config, k, self.world.size)) for k in self.CONVERTIBLE_ORDER]
            sample = state["step"] * math.prod(was)
        change = self.order_change
        if change:
            epochs = self._convert_epochs(state["step"], sample)
            print0(
                f"resuming with --force ({change}): step {state['step']} ended at sample {sample:,}; "
                f"continuing from that sample, {self._global_batch():,} samples a step{epochs}"
            )
        return sample

    def _convert_epochs(self, step: int, sample: int) -> str:
        """Under --epochs, the steps left are those that take the samples left at the new batch shape."""
        total = getattr(self.config, "epoch_samples", None)
        if total is None:
            return ""
        self.config.max_steps = step + max(0, math.ceil((total - sample) / self._global_batch()))
        return f", {self.config.max_steps - step:,} steps to finish {self.config.epochs:g} epochs"

    def fit(self) -> dict:
        """Train to max_steps (or the time limit); returns the last metrics row."""
        cfg, world = self.config, self.world
        log, report = self._metrics_log(), EvaluationReport.of(self)
        bar = progress_bar(cfg.max_steps, self.start_step, is_shown=world.is_main and cfg.progress)
        started, row = time.perf_counter(), {}
        self.model.train()
        for step in range(self.start_step, cfg.max_steps):
            t0 = time.perf_counter()
            row = self._train_step(step)
            row["tokens_per_s"] = row.pop("tokens") / (time.perf_counter() - t0)
            row["elapsed_s"] = time.perf_counter() - started
            report.add(row)
            done = step + 1 == cfg.max_steps or (cfg.max_minutes and row["elapsed_s"] > 60 * cfg.max_minutes)
            if (step + 1) % cfg.eval_every == 0 or done:
                row.update(self.evaluate())
                if world.is_main:
                    bar.write(report.lines(row))
                self._sample(bar, step + 1)
                done = done or self.stop_requested
            if log:
                log.log(row)
            bar.update(1)
            bar.set_postfix(
                loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.0f}", lr=f"{row['lr']:.2e}"
            )
            if (step + 1) % cfg.save_every == 0 or done:
                self.save_checkpoint(step + 1)
            if done:
                break
        bar.close()
        if log:
            log.close()
        if world.is_main and row:
            self._export_final()
        barrier(world)
        return row

    def _metrics_log(self):
        from lmforge.train.metrics import MetricsLog

        if not self.world.is_main:
            return None
        cfg = self.config
        return MetricsLog(
            self.out / "metrics.jsonl",
            resume_from_step=self.start_step if cfg.resume else None,
            tensorboard_dir=str(self.out / "tensorboard") if cfg.tensorboard else None,
        )

    def _export_final(self) -> None:
        """Copy the last checkpoint's model files to OUT itself (so `--model OUT` works) and draw the loss curve."""
        from lmforge.eval.plot import write_loss_png
        from lmforge.train.metrics import read_metrics

        self.export_model(ckpt.latest_checkpoint(self.out))
        write_loss_png(read_metrics(self.out / "metrics.jsonl"), self.out / "loss.png")

    def export_model(self, latest: Path) -> None:
        """Copy the model files of the last checkpoint to OUT."""
        for f in latest.iterdir():
            if f.name not in ckpt.TRAINING_FILES:  # the model directory only
                tmp = self.out / f".{f.name}.tmp"
                shutil.copyfile(f, tmp)
                os.replace(tmp, self.out / f.name)

    def _train_step(self, step: int) -> dict:
        cfg = self.config
        lr = lr_at(
            step,
            lr=cfg.lr,
            warmup_steps=cfg.warmup_steps,
            max_steps=cfg.max_steps,
            min_lr_ratio=cfg.min_lr_ratio,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = [
            self._to_device(self.train_batch(self._first_sample(step, m))) for m in range(cfg.grad_accum)
        ]
        loss, _ = accumulate_gradients(
            self.model, micro, self.loss_fn, self.world, self.autocast, self.scaler
        )
        n_inputs = count_input_tokens(micro, self.world)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or float("inf"))
        loss, grad_norm = loss.item(), float(grad_norm)
        row = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": n_inputs}
        if self.scaler is not None and math.isfinite(loss):
            # An overflow only means the scale was too high: GradScaler skips the step and lowers it.
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            return row if math.isfinite(grad_norm) else {**row, "skipped": True}
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            if cfg.skip_nonfinite:
                return {**row, "skipped": True}
            latest = ckpt.latest_checkpoint(self.out)
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            raise LmforgeError(
                f"non-finite {what} at step {step + 1} (loss {loss}, grad norm {grad_norm}); "
                f"stopped, keeping the last good checkpoint ({latest or 'none yet'}). "
                "Lower --lr, or pass --skip-nonfinite to skip such steps"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return row

    def _to_device(self, batch: dict) -> dict:
        return {
            k: v.to(self.world.device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Validation loss (mean over tokens) and perplexity; each process takes its share of batches."""
        if not self.eval_set:
            return {}
        loss_sum = torch.zeros((), dtype=torch.float64)
        count = torch.zeros((), dtype=torch.float64)
        with evaluating(self.model):
            for batch in self.eval_set[self.world.rank :: self.world.size]:
                with self.autocast():
                    s, n = self.loss_fn(self.model, self._to_device(batch))
                loss_sum += s.double().cpu()
                count += n.double().cpu()
        loss_sum, count = all_reduce_sum(loss_sum, self.world), all_reduce_sum(count, self.world)
        val_loss = (loss_sum / count.clamp(min=1)).item()
        if not self.reports_perplexity:
            return {"val_loss": val_loss}
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}

    def _sample(self, bar, step: int) -> None:
        """Print a short generated sample (a seeded sampler: the training RNG is left untouched)."""
        if not (self.sample_fn or (self.sample_prompt and self.tokenizer)) or not self.config.sample_tokens:
            return
        if not (self.world.is_main or self.config.fsdp):  # FSDP's forward needs every process
            return
        from lmforge.inference import generate

        model = unwrap(self.raw_model)
        with evaluating(model), self.autocast():
            if self.sample_fn is not None:
                text = self.sample_fn(model)
            else:
                text = self.sample_prompt + generate(
                    model,
                    self.tokenizer,
                    self.sample_prompt,
                    max_new_tokens=self.config.sample_tokens,
                    temperature=0.8,
                    top_k=40,
                    seed=self.config.seed,
                )
        if self.world.is_main:
            bar.write(f"--- sample at step {step} ---\n{text}\n---")

    def save_checkpoint(self, step: int) -> None:
        """Write checkpoint `step` (rank 0 writes; every process gathers and waits)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        # Names come from the unwrapped model, so checkpoints read the same with or without DDP/FSDP.
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.raw_model, options=options)
        optim_state = get_optimizer_state_dict(self.raw_model, self.optimizer, options=options)
        if self.world.is_main:
            state = {
                "fingerprint": self.fingerprint,
                "config": asdict(self.config),
                "data_position": {"step": step, "samples": self._first_sample(step, 0, rank=0)},
                "precision": self.precision.name,
                **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
                **self.task_state(),
            }
            ckpt.write_checkpoint(
                self.out,
                step,
                save_model=lambda d: self._save_model(d, model_state),
                optim_state=optim_state,
                trainer_state=state,
                keep_last=self.config.keep_last,
            )
        barrier(self.world)

    def _global_batch(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.world.size

    def _first_sample(self, step: int, micro: int, rank: int | None = None) -> int:
        """The global sample where micro-batch `micro` of process `rank` (this one) begins in step `step`."""
        rank = self.world.rank if rank is None else rank
        begins = self.start_sample + (step - self.start_step) * self._global_batch()
        return begins + (micro * self.world.size + rank) * self.config.batch_size

    def _save_model(self, directory: Path, state_dict: dict) -> None:
        self.raw_model.save_pretrained(directory, state_dict=state_dict)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)


def model_sizes(model) -> tuple[int, int]:
    """(d_model, d_ff) of a model (or a task model around one): the matmuls a precision probe times."""
    config = getattr(model, "config", None)
    d_model = getattr(config, "d_model", None) or 768
    return d_model, getattr(config, "d_ff", None) or 4 * d_model
