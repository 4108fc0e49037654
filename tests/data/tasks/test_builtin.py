"""Built-in tasks from the standard library: deterministic, non-empty, balanced classes, disjoint splits,
sources without docstrings and targets equal to the docstring's first line, QA answers inside their
docstrings, files readable by the task readers, and the baselines."""

import ast
import json
from collections import Counter

import pytest

from lmforge.data.tasks import (
    LabelMap,
    baseline_predictions,
    build_task,
    prepare_squad_train,
    read_classification,
    read_seq2seq,
    read_squad,
    write_task,
)
from lmforge.data.tasks.builtin import CLASSIFICATION_PACKAGES, MIN_SUMMARY_WORDS, split_of
from lmforge.errors import LmforgeError


@pytest.fixture(scope="module")
def package_task():
    return build_task("stdlib-package")


@pytest.fixture(scope="module")
def docstring_task():
    return build_task("stdlib-docstring")


def test_builds_are_deterministic(package_task, docstring_task):
    # NOTE: parsing is cached per file (parsing is deterministic); everything after it runs again.
    assert build_task("stdlib-package") == package_task
    assert build_task("stdlib-docstring") == docstring_task
    assert build_task("stdlib-qa") == build_task("stdlib-qa")


def test_splits_are_non_empty_disjoint_and_fixed_by_name(package_task, docstring_task):
    for splits in (package_task, docstring_task):
        sizes = {s: len(rows) for s, rows in splits.items()}
        total = sum(sizes.values())
        assert total > 1000 and 0.7 < sizes["train"] / total < 0.9 and min(sizes.values()) > 50
        names = [row["name"] for rows in splits.values() for row in rows]
        assert len(names) == len(set(names))
        texts = [row.get("text", row.get("source")) for rows in splits.values() for row in rows]
        assert len(texts) == len(set(texts))
        assert all(split_of(row["name"]) == s for s, rows in splits.items() for row in rows)


def test_classes_are_balanced(package_task):
    counts = Counter(row["label"] for rows in package_task.values() for row in rows)
    assert set(counts) == set(CLASSIFICATION_PACKAGES)
    assert len(set(counts.values())) == 1  # every package keeps as many functions as the smallest
    train = Counter(row["label"] for row in package_task["train"])
    mean = sum(train.values()) / len(train)
    assert all(0.8 * mean < n < 1.2 * mean for n in train.values())
    assert all(row["name"].startswith(row["label"] + ".") for row in package_task["test"])


def test_sources_are_functions_without_docstrings_and_targets_their_first_line(docstring_task):
    for row in docstring_task["validation"]:
        function = ast.parse(row["source"]).body[0]
        assert isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        assert ast.get_docstring(function) is None and function.body
        assert row["name"].endswith("." + function.name) or "#" in row["name"]
        assert len(row["target"].split()) >= MIN_SUMMARY_WORDS and "\n" not in row["target"]


def test_written_files_read_back_and_baselines(tmp_path):
    summary = write_task("stdlib-package", tmp_path / "cls")
    train = read_classification(tmp_path / "cls" / "train.jsonl")
    test = read_classification(tmp_path / "cls" / "test.jsonl")
    assert summary["counts"]["train"] == len(train) and summary["counts"]["test"] == len(test)
    assert json.loads((tmp_path / "cls" / "summary.json").read_text()) == summary
    assert LabelMap.from_examples(train).names == sorted(CLASSIFICATION_PACKAGES)
    test_counts = Counter(e.label for e in test)
    majority = summary["baseline"]["majority_label"]
    assert summary["baseline"]["test_accuracy"] == test_counts[majority] / len(test)
    assert summary["label_counts"]["test"] == dict(sorted(test_counts.items()))
    assert 0.1 < summary["baseline"]["test_accuracy"] < 0.3  # about 1/6: six balanced classes

    summary = write_task("stdlib-docstring", tmp_path / "sum")
    rows = [json.loads(line) for line in (tmp_path / "sum" / "test.jsonl").read_text().splitlines()]
    pairs = read_seq2seq(tmp_path / "sum" / "test.jsonl", prefix="summarize: ")
    assert len(pairs) == len(rows) == summary["counts"]["test"]
    predictions = baseline_predictions("stdlib-docstring", rows)
    assert predictions[0] == rows[0]["source"].splitlines()[0].strip()
    assert all(p.startswith(("def ", "async def ")) for p in predictions)
    # summary.json reports the baseline's ROUGE: what a fine-tuned model has to beat
    from lmforge.eval.metrics import rouge_l

    test_rouge_l = sum(rouge_l(p, r["target"])[2] for p, r in zip(predictions, rows)) / len(rows)
    assert summary["baseline"]["test"]["rougeL"] == pytest.approx(test_rouge_l)
    assert 0.05 < test_rouge_l < 0.4
    assert set(summary["baseline"]["validation"]) == {"rouge1", "rouge2", "rougeL"}


def test_qa_task_is_squad_with_answers_in_their_docstrings(tmp_path, wordpiece):
    summary = write_task("stdlib-qa", tmp_path / "qa")
    splits = {s: read_squad(tmp_path / "qa" / f"{s}.json") for s in ("train", "validation", "test")}
    assert {s: len(e) for s, e in splits.items()} == summary["counts"]
    for split, examples in splits.items():
        answerable = [e for e in examples if not e.is_impossible]
        assert len(answerable) == summary["answerable"][split] and 0 < len(answerable) < len(examples)
        for e in answerable:  # read_squad has checked each answer is at its answer_start
            assert e.question.startswith("What does ") and e.question.endswith(" return?")
            assert (
                e.context[: e.answers[0].start].rstrip().endswith(("Return", "Returns", "return", "returns"))
            )
        for e in examples:
            if e.is_impossible:
                assert "return" not in e.context.lower()
            assert split_of(e.id) == split
    features = prepare_squad_train(wordpiece, splits["test"][:20], max_length=96, stride=32)
    assert any(f["start_positions"] > 0 for f in features)
    assert baseline_predictions("stdlib-qa", [{"context": "Return it.\nMore."}]) == ["Return it."]


def test_errors(tmp_path):
    with pytest.raises(LmforgeError, match="unknown built-in task 'nope'"):
        build_task("nope")
    with pytest.raises(LmforgeError, match="needs the training rows"):
        baseline_predictions("stdlib-package", [{"label": "email"}])
    (tmp_path / "file").write_text("x")
    with pytest.raises(LmforgeError, match="choose a writable directory"):
        write_task("stdlib-package", tmp_path / "file" / "sub")


def test_heldout_corpus_leaves_out_every_task_package():
    import sysconfig
    from pathlib import Path

    from lmforge.data.sources import builtin_corpus_files
    from lmforge.data.tasks import heldout_corpus_files
    from lmforge.data.tasks.builtin import SUMMARIZATION_PACKAGES

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    everything, heldout = builtin_corpus_files(), heldout_corpus_files()
    assert heldout and set(heldout) < set(everything)
    top = {f.relative_to(stdlib).parts[0].removesuffix(".py") for f in heldout}
    assert not top & set(SUMMARIZATION_PACKAGES) and {"os", "pathlib"} <= top
    # a file of a task package is among those left out
    left_out = {str(f) for f in set(everything) - set(heldout)}
    assert (stdlib / "json" / "decoder.py").as_posix() in left_out
