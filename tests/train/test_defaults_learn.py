"""Fine-tuning with every training option at its default learns: LoRA on the real all-MiniLM-L6-v2 on
an easy sentiment set, in float32 and in bf16, and a tiny T5 on a small word-translation set. Only the
data, the output directory, the precision and (for seq2seq) the task's source prefix are given."""

import csv
import json
import random

import pytest
from lmforge_cli import run_lmforge
from test_finetune_seq2seq import PREFIX, _splits, write_base_and_data

from lmforge.device import cpu_has_native_bf16
from lmforge.eval.metrics import compute_metrics

pytestmark = pytest.mark.slow  # runs of the default length (3 epochs), two of them on the real MiniLM

POSITIVE = {
    "adj": ["great", "wonderful", "excellent", "delightful", "superb", "lovely", "brilliant", "fantastic"],
    "verb": ["loved", "enjoyed", "adored", "liked", "admired"],
    "end": [
        "I would watch it again",
        "highly recommended",
        "a joy from start to finish",
        "worth every minute",
    ],
}
NEGATIVE = {
    "adj": ["awful", "terrible", "boring", "dreadful", "horrible", "dull", "tedious", "disappointing"],
    "verb": ["hated", "disliked", "regretted", "despised", "loathed"],
    "end": ["I want my money back", "avoid it", "a waste of time", "I walked out early"],
}
NOUNS = [
    "film",
    "movie",
    "plot",
    "cast",
    "soundtrack",
    "ending",
    "script",
    "story",
    "acting",
    "show",
    "sequel",
]
TEMPLATES = [
    "The {noun} was {adj}.",
    "I {verb} this {noun}.",
    "What a {adj} {noun}!",
    "A {adj} {noun}; {end}.",
    "Honestly, the {noun} felt {adj}.",
    "I {verb} the {noun}, {end}.",
    "{adj} {noun} and a {adj2} {noun2}.",
    "We {verb} it: the {noun} is {adj}.",
]


def sentiment_rows(n: int, seed: int = 0) -> list[dict]:
    """n distinct reviews, half positive and half negative in a seeded order, from templates and word lists."""
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < n:
        label = rng.choice(["positive", "negative"])
        words = POSITIVE if label == "positive" else NEGATIVE
        adj, adj2 = rng.sample(words["adj"], 2)
        noun, noun2 = rng.sample(NOUNS, 2)
        text = rng.choice(TEMPLATES).format(
            noun=noun,
            noun2=noun2,
            adj=adj,
            adj2=adj2,
            verb=rng.choice(words["verb"]),
            end=rng.choice(words["end"]),
        )
        text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            rows.append({"text": text, "label": label})
    return rows


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    """train.csv (300 rows) and validation.csv (100 rows, none of them a training text)."""
    data = tmp_path_factory.mktemp("sentiment")
    rows = sentiment_rows(400)
    for name, part in (("train", rows[:300]), ("validation", rows[300:])):
        with open(data / f"{name}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["text", "label"])
            writer.writeheader()
            writer.writerows(part)
    return data


NATIVE_BF16 = pytest.mark.skipif(
    not cpu_has_native_bf16(),
    reason="needs a CPU with bf16 instructions: emulated bf16 runs this 22.7M-parameter model ~100x slower",
)


@pytest.mark.parametrize("precision", ["float32", pytest.param("bfloat16", marks=NATIVE_BF16)])
def test_lora_on_minilm_learns_with_default_options(minilm_path, sentiment, tmp_path, precision):
    out = tmp_path / "run"
    flags = ("--data", sentiment, "--out", out, "--precision", precision, "--no-progress")
    result = run_lmforge(
        "finetune", "--task", "classification", "--method", "lora", "--model", minilm_path, *flags
    )
    assert result.returncode == 0, result.stderr
    assert "peak learning rate 0.001, the classification lora default" in result.stdout
    assert "3 epochs of 300 rows" in result.stdout
    accuracy = json.loads((out / "metrics.json").read_text())["accuracy"]
    print(f"{precision}: held-out accuracy {accuracy:.3f}")
    assert accuracy >= 0.9


def test_seq2seq_learns_with_default_options(tmp_path):
    base, data = write_base_and_data(tmp_path)  # the tiny random T5 of test_finetune_seq2seq.py
    validation = _splits()[1]
    out = tmp_path / "run"
    flags = (
        "--data",
        data,
        "--out",
        out,
        "--source-prefix",
        PREFIX,
        "--precision",
        "float32",
        "--no-progress",
    )
    result = run_lmforge("finetune", "--task", "seq2seq", "--model", base, *flags)
    assert result.returncode == 0, result.stderr
    assert "peak learning rate 0.001, the seq2seq full default" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    copied = compute_metrics(
        "seq2seq", [PREFIX + r["source"] for r in validation], [r["target"] for r in validation]
    )
    print(
        f"rougeL {metrics['rougeL']:.3f}, bleu {metrics['bleu']:.1f} (copying the source: {copied['rougeL']})"
    )
    assert metrics["rougeL"] > 0.8 and metrics["bleu"] > 50
