"""`lmforge finetune --task qa`, `evaluate` and `answer` as a user runs them: real subprocesses on a tiny
BERT "pretrained" checkpoint and a small SQuAD v2.0 file whose long contexts (several windows each) hide
one colour word, the answer, or none (an unanswerable question)."""

import json
import random

import pytest
import torch
from lmforge_cli import assert_one_line_error, finetune_under_bf16, run_lmforge

import lmforge
from lmforge.data.tasks import read_squad
from lmforge.eval.metrics import qa_metrics
from lmforge.models import SpanQA, build_model, get_preset
from lmforge.tokenizers import train_tokenizer

pytestmark = pytest.mark.slow  # fine-tuning in real subprocesses; most tests share a 100-step run

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
FILLER = ["the", "a", "of", "and", "to", "in", "it", "was", "for", "on", "with", "as", "at", "by", "car"]
FILLER += ["road", "old", "man", "saw", "near", "town", "house", "drove", "slowly", "past", "park"]
QUESTION = "what colour was the car?"


def _questions(n: int, seed: int) -> list[dict]:
    """n questions on contexts of 50-70 words; every fourth is unanswerable (no colour in its context)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(50, 70))]
        row = {"id": f"q{seed}-{i}", "question": QUESTION, "answers": [], "is_impossible": i % 4 == 3}
        if not row["is_impossible"]:
            at = rng.randrange(len(words))
            words.insert(at, rng.choice(COLOURS))
            start = len(" ".join(words[:at])) + (at > 0)
            row["answers"] = [{"text": words[at], "answer_start": start}]
        rows.append({**row, "context": " ".join(words)})
    return rows


def _squad(rows: list[dict]) -> dict:
    data = []
    for r in rows:
        qa = {k: r[k] for k in ("id", "question", "answers", "is_impossible")}
        data.append({"title": r["id"], "paragraphs": [{"context": r["context"], "qas": [qa]}]})
    return {"version": "v2.0", "data": data}


def _write_json(path, document) -> None:
    path.write_text(json.dumps(document), encoding="utf-8")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random BERT with a WordPiece tokenizer saved as the "pretrained" model, and the data."""
    root = tmp_path_factory.mktemp("finetune_qa")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["context"] for r in _questions(40, seed=1)) + f"\n{QUESTION}\n")
    tok = train_tokenizer([corpus], vocab_size=120, kind="wordpiece")
    config = get_preset(
        "bert-tiny", vocab_size=128, n_layers=2, pad_token_id=tok.pad_token_id, max_seq_len=64
    )
    base = root / "base"
    torch.manual_seed(0)  # the base weights must not depend on which tests ran before in this process
    build_model(config).save_pretrained(base)
    tok.save_pretrained(base)
    data = root / "data"
    data.mkdir()
    _write_json(data / "train.json", _squad(_questions(64, seed=2)))
    _write_json(data / "validation.json", _squad(_questions(24, seed=3)))
    return root, base, data


WINDOW_FLAGS = ("--max-length", 32, "--stride", 8, "--max-answer-length", 5)
# Validation F1 >= 95 from step 70 on at each of 10 base-model seeds tried (the test asks 85 at step 100)
TRAIN_FLAGS = ("--max-steps", 100, "--batch-size", 16, "--lr", 1e-3, "--warmup-steps", 4, "--eval-every", 50)
TRAIN_FLAGS += (*WINDOW_FLAGS, "--no-progress", "--device", "cpu", "--seed", 0)


@pytest.fixture(scope="module")
def trained(setup):
    root, base, data = setup
    out = root / "run"
    result = run_lmforge(
        "finetune", "--task", "qa", "--model", base, "--data", data, "--out", out, *TRAIN_FLAGS
    )
    assert result.returncode == 0, result.stderr
    return out, result


def _first_line_baseline(data) -> dict:
    examples = read_squad(data / "validation.json")
    predictions = [e.context.strip().splitlines()[0].strip() for e in examples]
    return qa_metrics(predictions, [[a.text for a in e.answers] for e in examples])


def test_finetune_beats_first_line_baseline(trained, setup):
    out, result = trained
    metrics = json.loads((out / "metrics.json").read_text())
    baseline = _first_line_baseline(setup[2])
    print(
        f"validation F1 {metrics['f1']:.2f}, exact {metrics['exact']:.2f} "
        f"(first line of the context: F1 {baseline['f1']:.2f}, exact {baseline['exact']:.2f})"
    )
    assert baseline["f1"] < 10  # the whole context for a one-word answer, and never "no answer"
    assert metrics["f1"] > 85 and metrics["exact"] > 85
    assert metrics["HasAns_total"] == 18 and metrics["NoAns_total"] == 6  # v2.0 groups
    assert metrics["NoAns_exact"] > 50  # it learned to answer nothing when there is nothing
    assert "f1" in result.stdout and "exact" in result.stdout
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["f1"] >= metrics["f1"]  # OUT/best holds the best evaluation, the last included


def test_output_and_best_reopen_as_span_qa(trained, setup):
    out, _ = trained
    for directory in (out, out / "best"):
        model = lmforge.load_model(directory)
        assert isinstance(model, SpanQA)
        assert lmforge.load_tokenizer(directory).vocab_size == lmforge.load_tokenizer(setup[1]).vocab_size


def test_evaluate_reproduces_metrics_and_answer_agrees(trained, setup):
    out, _ = trained
    root, _, data = setup
    result = run_lmforge(
        "evaluate",
        "--model",
        out,
        "--task",
        "qa",
        "--data",
        data / "validation.json",
        "--out",
        root / "eval.json",
        *WINDOW_FLAGS,
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads((root / "eval.json").read_text()) == metrics
    # `answer` on the same questions, as a SQuAD file and as JSON Lines, gives the answers scored above.
    rows = _questions(24, seed=3)
    lines = root / "questions.jsonl"
    lines.write_text(
        "".join(json.dumps({"question": r["question"], "context": r["context"]}) + "\n" for r in rows)
    )
    printed = []
    for source in (data / "validation.json", lines):
        result = run_lmforge("answer", "--model", out, "--input", source, *WINDOW_FLAGS)
        assert result.returncode == 0, result.stderr
        printed.append(result.stdout.split("\n")[:-1])
    assert printed[0] == printed[1] and len(printed[0]) == len(rows)
    references = [[a["text"] for a in r["answers"]] for r in rows]
    assert qa_metrics(printed[0], references) == metrics
    # One question about a context file; --always-answer never prints an empty line.
    context = root / "context.txt"
    context.write_text(rows[3]["context"] + "\n")  # the unanswerable question
    one = ("answer", "--model", out, "--question", QUESTION, "--context-file", context, *WINDOW_FLAGS)
    assert run_lmforge(*one).stdout == printed[0][3] + "\n"
    always = run_lmforge(*one, "--always-answer")
    assert always.returncode == 0 and always.stdout.strip() != ""


def test_lora_trains_the_adapter_and_span_head(setup):
    root, base, data = setup
    out = root / "lora"
    flags = ("--max-steps", 10, "--batch-size", 8, "--lr", 1e-3, "--eval-every", 10, *WINDOW_FLAGS)
    result = run_lmforge(
        "finetune",
        "--task",
        "qa",
        "--method",
        "lora",
        "--model",
        base,
        "--data",
        data,
        "--out",
        out,
        *flags,
        "--no-progress",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert "LoRA on q_proj, v_proj" in result.stdout
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["qa_outputs"]
    assert isinstance(lmforge.load_model(out), SpanQA)
    assert {"f1", "exact"} <= set(json.loads((out / "metrics.json").read_text()))


def test_bad_inputs_exit_2_with_one_line(setup):
    root, base, data = setup
    run = ("finetune", "--task", "qa", "--model", base, "--out", root / "bad", "--no-progress", *WINDOW_FLAGS)
    moved = _squad(_questions(4, seed=5))
    moved["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    _write_json(root / "moved.json", moved)
    assert_one_line_error(run_lmforge(*run, "--data", root / "moved.json"), "q5-0", "not in its context")
    _write_json(root / "empty.json", {"version": "v2.0", "data": []})
    assert_one_line_error(run_lmforge(*run, "--data", root / "empty.json"), "has no questions")
    for preset, family in (("t5-tiny", "t5"), ("tiny", "gpt2")):
        other = root / family
        build_model(get_preset(preset, vocab_size=128)).save_pretrained(other)
        lmforge.load_tokenizer(base).save_pretrained(other)
        assert_one_line_error(
            run_lmforge(*run, "--data", data, "--model", other), f"a {family} model", "BERT-family"
        )
    assert_one_line_error(
        run_lmforge("answer", "--model", base, "--question", QUESTION, "--context-file", root / "corpus.txt"),
        "not a question-answering model",
    )
    assert_one_line_error(run_lmforge("answer", "--model", base), "--input")


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_few_steps_under_bf16_autocast(setup, method):
    """bf16 autocast on any CPU: training, validation scoring and the saved model."""
    root, base, data = setup
    metrics = finetune_under_bf16("qa", base, data, root / f"bf16-{method}", method, *WINDOW_FLAGS)
    assert 0 <= metrics["f1"] <= 100
