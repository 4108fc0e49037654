"""What fine-tuning reports for every task: `tokens_per_s` counts the real input tokens (not the
examples, which classification's loss counts), and `val_ppl` appears only where the loss is per token.

The runs are in-process (`lmforge.cli.main`) with the loop's clock replaced by one that advances one
second per reading, so `tokens_per_s` is exactly the step's token count."""

import csv
import itertools
import json
import math
import types

import pytest
import torch

import lmforge.train.loop
from lmforge.cli import main
from lmforge.models import build_model, get_preset
from lmforge.tokenizers import load_tokenizer, train_tokenizer
from lmforge.train.finetune import FinetuneConfig
from lmforge.train.loss import IGNORE_INDEX
from lmforge.train.tasks.instruct import InstructTask

TEXTS = [
    "the rocket left orbit",
    "a goal in the match and the referee ran to the stadium",
    "flour in the oven",
    "the comet passed the planet on its long way",
    "simmer the garlic",
    "the league match",
    "a galaxy",
    "the recipe of the cake with flour and garlic in the oven at the end of the day",
]
LABELS = ["space", "sport", "cooking", "space", "cooking", "sport", "space", "cooking"]


@pytest.fixture
def one_second_steps(monkeypatch):
    """The loop's clock: each `time.perf_counter()` reads one second later than the one before."""
    ticks = itertools.count()
    monkeypatch.setattr(
        lmforge.train.loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks)))
    )


def _metrics_rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _run(*args) -> None:
    flags = ("--max-steps", 2, "--eval-every", 2, "--warmup-steps", 1, "--no-progress", "--device", "cpu")
    assert main(["finetune", *map(str, args), *map(str, flags)]) == 0


def test_classification_counts_input_tokens_and_reports_no_perplexity(tmp_path, one_second_steps):
    (tmp_path / "corpus.txt").write_text("\n".join(TEXTS) + "\n")
    tok = train_tokenizer([tmp_path / "corpus.txt"], vocab_size=120, kind="wordpiece")
    torch.manual_seed(0)
    config = get_preset(
        "bert-tiny", vocab_size=128, n_layers=2, pad_token_id=tok.pad_token_id, max_seq_len=64
    )
    build_model(config).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    for name in ("train.csv", "validation.csv"):
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *zip(TEXTS, LABELS)])
    out = tmp_path / "run"
    # One batch of all 8 rows per step: each step reads every text once, [CLS] and [SEP] included.
    _run(
        "--task", "classification", "--model", tmp_path / "base", "--data", tmp_path / "train.csv",
        "--validation", tmp_path / "validation.csv", "--batch-size", len(TEXTS), "--out", out,
    )  # fmt: skip
    tokens = sum(len(tok.backend.encode(text).ids) for text in TEXTS)
    assert tokens > 4 * len(TEXTS)  # far from the 8 examples a step that the old count reported
    rows = _metrics_rows(out)
    assert [row["tokens_per_s"] for row in rows] == [tokens, tokens]
    assert "val_loss" in rows[-1] and not any("val_ppl" in row for row in rows)
    assert "val_ppl" not in json.loads((out / "best" / "metrics.json").read_text())


def test_instruct_counts_input_tokens_and_reports_perplexity(tmp_path, one_second_steps):
    (tmp_path / "corpus.txt").write_text(" ".join(TEXTS) + " <|user|> <|assistant|>\n")
    tok = train_tokenizer([tmp_path / "corpus.txt"], vocab_size=300, kind="bpe")
    torch.manual_seed(0)
    base = tmp_path / "base"
    build_model(get_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=96)).save_pretrained(base)
    tok.save_pretrained(base)
    rows = [{"instruction": "Which topic?", "input": t, "output": label} for t, label in zip(TEXTS, LABELS)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    _run(
        "--task", "instruct", "--model", base, "--data", tmp_path / "train.jsonl",
        "--validation", tmp_path / "train.jsonl", "--batch-size", len(rows), "--out", out,
    )  # fmt: skip
    task = InstructTask(FinetuneConfig(model=str(out), task="instruct"))
    features = task.encode(load_tokenizer(out), task.read(tmp_path / "train.jsonl"), training=True)
    tokens = sum(len(f["input_ids"]) for f in features)  # prompt and reply: every token the model reads
    labelled = sum(sum(label != IGNORE_INDEX for label in f["labels"]) for f in features)
    assert tokens > labelled
    metrics = _metrics_rows(out)
    assert [row["tokens_per_s"] for row in metrics] == [tokens, tokens]
    assert metrics[-1]["val_ppl"] == pytest.approx(math.exp(metrics[-1]["val_loss"]))
