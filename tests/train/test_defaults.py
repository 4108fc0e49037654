"""Defaults that learn: warmup capped at a tenth of the run, `--epochs` as the other way to say how long,
a learning rate per fine-tuning task and method, and a corpus of two sentences that pretrains (the
seeds' "I love you / I miss you") where one too small to train says how much text it needs."""

import json
import math

import pytest
from lmforge_cli import assert_one_line_error, run_lmforge

from lmforge.errors import LmforgeError
from lmforge.train.finetune import DEFAULT_EPOCHS, FinetuneConfig, default_lr
from lmforge.train.loop import TrainConfig
from lmforge.train.optim import lr_at
from lmforge.train.pretrain import PretrainConfig


def _schedule(max_steps: int, warmup_steps: int, lr: float = 1e-3) -> list[float]:
    return [
        lr_at(s, lr=lr, warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=0.1)
        for s in range(max_steps)
    ]


def test_a_short_run_reaches_its_peak_rate():
    rates = _schedule(max_steps=10, warmup_steps=30)  # the old fine-tuning default warmup, 10 steps
    assert rates[0] == pytest.approx(1e-3)  # a warmup of one step: the peak at once
    assert rates == sorted(rates, reverse=True) and rates[-1] > 1e-4


def test_warmup_is_capped_at_a_tenth_of_the_run():
    rates = _schedule(max_steps=50, warmup_steps=30)
    assert rates[:5] == pytest.approx([1e-3 * (s + 1) / 5 for s in range(5)])  # 5 = 50 // 10 steps
    assert max(rates) == pytest.approx(1e-3) and rates.index(max(rates)) == 4


def test_a_long_run_keeps_its_warmup():
    rates = _schedule(max_steps=1000, warmup_steps=100)
    assert rates[:100] == pytest.approx([1e-3 * (s + 1) / 100 for s in range(100)])
    assert rates[999] == pytest.approx(1e-4, rel=1e-3)  # the cosine ends at lr * min_lr_ratio
    assert lr_at(1000, lr=1e-3, warmup_steps=100, max_steps=1000, min_lr_ratio=0.1) == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "epochs, rows, batch, accum, world, steps",
    [(3, 300, 16, 1, 1, 57), (1, 32, 16, 1, 1, 2), (0.5, 100, 8, 2, 2, 2), (2, 5, 16, 1, 1, 1)],
)
def test_epochs_become_steps(epochs, rows, batch, accum, world, steps):
    config = TrainConfig(epochs=epochs, batch_size=batch, grad_accum=accum)
    assert config.max_steps is None
    config.steps_for_epochs(rows, world)
    assert config.max_steps == steps == max(1, math.ceil(epochs * rows / (batch * accum * world)))


def test_max_steps_or_epochs_not_both():
    with pytest.raises(LmforgeError, match="--max-steps or --epochs, not both"):
        TrainConfig(max_steps=10, epochs=1)
    with pytest.raises(LmforgeError, match=r"--epochs .* must be a finite number in \(0, .*got 0"):
        TrainConfig(epochs=0)
    assert TrainConfig().max_steps == 1000 and PretrainConfig().epochs is None


def test_a_flag_for_one_length_replaces_the_recipes_other():
    """`--config demo.toml --epochs 2`: the flag's epochs replace the recipe's max_steps (both in flags
    or both in the recipe is still an error)."""
    import argparse

    from lmforge import config as cfg

    recipe = {"max_steps": 600, "lr": 2e-3}
    built = cfg.build(PretrainConfig, argparse.Namespace(epochs=2.0), recipe)
    assert (built.epochs, built.max_steps, built.lr) == (2.0, None, 2e-3)
    assert cfg.build(PretrainConfig, argparse.Namespace(max_steps=7), {"epochs": 1.0}).max_steps == 7
    with pytest.raises(LmforgeError, match="not both"):
        cfg.build(PretrainConfig, argparse.Namespace(), {"max_steps": 5, "epochs": 1.0})


def test_finetune_defaults_by_task_and_method():
    full, lora = FinetuneConfig(model="m"), FinetuneConfig(model="m", method="lora")
    assert full.lr == default_lr("classification", "full") == 5e-5
    assert lora.lr == default_lr("classification", "lora") == 1e-3
    assert FinetuneConfig(model="m", task="seq2seq").lr == 1e-3  # 5e-5 scored ROUGE 0 on a small model
    assert FinetuneConfig(model="m", lr=2e-4, method="lora").lr == 2e-4  # --lr wins
    assert full.epochs == DEFAULT_EPOCHS and full.max_steps is None  # steps follow the data's size
    assert FinetuneConfig(model="m", max_steps=40).epochs is None


def test_finetune_refuses_both_lengths_in_one_line(tmp_path):
    result = run_lmforge(
        "finetune", "--model", tmp_path, "--max-steps", 10, "--epochs", 2, "--out", tmp_path / "o"
    )
    assert_one_line_error(result, "--max-steps or --epochs, not both")


TWO_SENTENCES = "I love you\nI miss you\n"
TINY_FLAGS = ("--preset", "tiny", "--no-progress", "--precision", "float32", "--sample-tokens", 8)


@pytest.mark.slow
def test_two_sentences_pretrain_and_generate(tmp_path):
    """The seeds' example, as they type it: no --seq-len, no --val-fraction."""
    (tmp_path / "tiny.txt").write_text(TWO_SENTENCES)
    out = tmp_path / "run"
    result = run_lmforge(
        "pretrain", "--data", tmp_path / "tiny.txt", "--max-steps", 20, "--out", out, *TINY_FLAGS
    )
    assert result.returncode == 0, result.stderr
    assert "the corpus is small" in result.stdout  # the windows it trains on instead of --seq-len's
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["val_tokens"] >= 3 and manifest["train_tokens"] >= 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and math.isfinite(rows[-1]["val_loss"])
    assert rows[-1]["loss"] < rows[0]["loss"]
    generated = run_lmforge("generate", "--model", out, "--prompt", "I love", "--max-new-tokens", 5)
    assert generated.returncode == 0, generated.stderr


def test_a_corpus_too_small_to_train_names_the_tokens_needed(tmp_path):
    (tmp_path / "tiny.txt").write_text("hi")
    result = run_lmforge("pretrain", "--data", tmp_path / "tiny.txt", "--out", tmp_path / "run", *TINY_FLAGS)
    assert_one_line_error(result, "too small", "needs at least 3", "add text")


@pytest.mark.slow
def test_pretrain_takes_val_fraction_and_epochs_and_resumes_to_the_same_length(tmp_path):
    (tmp_path / "corpus.txt").write_text(" ".join(f"word{i % 37} and more" for i in range(400)))
    out = tmp_path / "run"
    args = ("pretrain", "--data", tmp_path / "corpus.txt", "--out", out, *TINY_FLAGS, "--seq-len", 16)
    args += ("--val-fraction", 0.25, "--epochs", 2, "--batch-size", 4, "--eval-every", 5)
    first = run_lmforge(*args)
    assert first.returncode == 0, first.stderr
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    n = manifest["train_tokens"] + manifest["val_tokens"]
    assert manifest["val_tokens"] == round(n * 0.25)
    windows = (manifest["train_tokens"] - 1) // 16
    steps = math.ceil(2 * windows / 4)
    assert f"2 epochs of {windows} training windows: {steps} steps" in first.stdout
    assert len((out / "metrics.jsonl").read_text().splitlines()) == steps
    again = run_lmforge(*args, "--resume")  # the same data, so the same max_steps: nothing left to do
    assert again.returncode == 0, again.stderr
    assert f"already trained to step {steps}" in again.stdout
