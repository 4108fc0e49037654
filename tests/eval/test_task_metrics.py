"""Task metrics: hand-computed values for every metric (from each source's definition), the error lines,
and properties that hold for any input (F1 symmetric and bounded, EM <= F1, accuracy == micro-F1)."""

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.errors import LmforgeError
from lmforge.eval.metrics import (
    accuracy,
    bleu,
    classification_metrics,
    compute_metrics,
    confusion_matrix,
    format_table,
    lm_metrics,
    normalize_answer,
    perplexity,
    qa_metrics,
    rouge,
    rouge_l,
    rouge_lsum,
    rouge_n,
    rouge_tokens,
    seq2seq_metrics,
    squad_exact,
    squad_f1,
    unknown_label_error,
)

# ---- classification ----------------------------------------------------------------------------------------

# (prediction, reference): (a,a) (a,b) (b,b) (c,c) (c,a) (c,c)
PREDS = ["a", "a", "b", "c", "c", "c"]
REFS = ["a", "b", "b", "c", "a", "c"]


def test_confusion_matrix_rows_are_references_columns_predictions():
    matrix, labels = confusion_matrix(PREDS, REFS)
    assert labels == ["a", "b", "c"]
    assert matrix.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]
    matrix, labels = confusion_matrix(PREDS, REFS, labels=["c", "b", "a", "d"])
    assert matrix.tolist() == [[2, 0, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def test_classification_metrics_by_hand():
    # precision a 1/2 b 1 c 2/3; recall a 1/2 b 1/2 c 1; F1 a 1/2 b 2/3 c 4/5; each class has 2 references
    m = classification_metrics(PREDS, REFS)
    expected = {
        "accuracy": 4 / 6,
        "macro_precision": 13 / 18,
        "macro_recall": 2 / 3,
        "macro_f1": 59 / 90,
        "weighted_precision": 13 / 18,
        "weighted_recall": 2 / 3,
        "weighted_f1": 59 / 90,
        "micro_f1": 4 / 6,
        "precision/a": 0.5,
        "recall/a": 0.5,
        "f1/a": 0.5,
        "precision/b": 1.0,
        "recall/b": 0.5,
        "f1/b": 2 / 3,
        "precision/c": 2 / 3,
        "recall/c": 1.0,
        "f1/c": 0.8,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert (m["support/a"], m["support/b"], m["support/c"]) == (2, 2, 2)


def test_a_class_never_seen_scores_zero_and_counts_in_the_macro_mean():
    m = classification_metrics(PREDS, REFS, labels=["a", "b", "c", "d"])
    assert (m["precision/d"], m["recall/d"], m["f1/d"], m["support/d"]) == (0.0, 0.0, 0.0, 0)
    assert m["macro_f1"] == pytest.approx(59 / 90 * 3 / 4)
    assert m["weighted_f1"] == pytest.approx(59 / 90)  # weight 0
    assert m["micro_f1"] == pytest.approx(4 / 6)


def test_weighted_average_uses_the_reference_counts():
    # x: P 1, R 2/3, F 4/5 (3 references); y: P 1/2, R 1, F 2/3 (1 reference)
    m = classification_metrics(["x", "x", "y", "y"], ["x", "x", "x", "y"])
    assert m["weighted_f1"] == pytest.approx(3 / 4 * 4 / 5 + 1 / 4 * 2 / 3)
    assert m["weighted_precision"] == pytest.approx(7 / 8)
    assert m["weighted_recall"] == pytest.approx(3 / 4)
    assert m["macro_f1"] == pytest.approx(11 / 15)


def test_integer_labels_and_accuracy():
    assert accuracy([0, 1, 1, 2], [0, 1, 2, 2]) == 0.75
    m = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2])
    assert m["f1/1"] == pytest.approx(2 / 3) and m["support/2"] == 2
    assert classification_metrics(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])) == m  # arrays, e.g. argmax


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=40))
def test_classification_properties(pairs):
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    m = classification_metrics(preds, refs)
    correct = sum(p == r for p, r in pairs)
    assert m["accuracy"] == pytest.approx(correct / len(pairs))
    # single-label: every error is one FP and one FN, so micro P = R = F1 = accuracy = weighted recall
    assert m["micro_f1"] == pytest.approx(m["accuracy"])
    assert m["weighted_recall"] == pytest.approx(m["accuracy"])
    assert all(0.0 <= v <= 1.0 for k, v in m.items() if not k.startswith("support/"))
    matrix, labels = confusion_matrix(preds, refs)
    assert matrix.sum() == len(pairs) and np.trace(matrix) == correct
    assert [m[f"support/{label}"] for label in labels] == matrix.sum(axis=1).tolist()


def test_classification_errors_are_one_line():
    with pytest.raises(
        LmforgeError, match=r"^3 predictions but 2 references; pass one prediction per reference$"
    ):
        accuracy([1, 2, 3], [1, 2])
    with pytest.raises(LmforgeError, match="no examples to evaluate"):
        classification_metrics([], [])
    with pytest.raises(LmforgeError, match=r"^reference 'z' of example 2 is not one of the labels: a, b$"):
        classification_metrics(["a", "a"], ["a", "z"], labels=["a", "b"])
    with pytest.raises(LmforgeError, match=r"^prediction 'q' of example 1 is not one of the labels: a$"):
        confusion_matrix(["q"], ["a"], labels=["a"])
    with pytest.raises(LmforgeError, match="labels repeat"):
        confusion_matrix(["a"], ["a"], labels=["a", "a"])


def test_unknown_label_error():
    err = unknown_label_error("X", 7, ["a", "b", "c"])
    assert isinstance(err, LmforgeError)
    assert str(err) == "label 'X' at line 7 is not one of the model's labels: a, b, c"
    err = unknown_label_error("X", 7, [f"l{i}" for i in range(25)], path="dev.jsonl")
    assert str(err).startswith("label 'X' at line 7 of dev.jsonl is not one of the model's labels: l0, l1,")
    assert str(err).endswith("l19, ... (5 more)") and "\n" not in str(err)


# ---- SQuAD ---------------------------------------------------------------------------------------------------


def test_answer_normalisation():
    assert normalize_answer("  The  Eiffel\tTower! ") == "eiffel tower"
    assert normalize_answer("U.S.A.") == "usa"
    assert normalize_answer("an apple and a theory") == "apple and theory"  # only whole words go
    assert normalize_answer("The") == ""


@pytest.mark.parametrize(
    ("pred", "gold", "exact", "f1"),
    [
        ("The Eiffel Tower!", "eiffel tower", 1.0, 1.0),
        ("a cat", "the cat", 1.0, 1.0),
        # repeated tokens are clipped: common 1, P 1/3, R 1/2
        ("paris paris paris", "paris france", 0.0, 0.4),
        ("in the year 1887", "1887", 0.0, 2 * (1 / 3) * 1 / (1 / 3 + 1)),
        ("", "paris", 0.0, 0.0),
        ("the", "", 1.0, 1.0),  # both normalise to nothing: v2.0 scores 1
        ("berlin", "paris", 0.0, 0.0),
    ],
)
def test_squad_exact_and_f1_by_hand(pred, gold, exact, f1):
    assert squad_exact(pred, gold) == exact
    assert squad_f1(pred, gold) == pytest.approx(f1, abs=1e-12)


def test_qa_metrics_take_the_best_gold_answer():
    # vs "1887": P 1/2 R 1 -> 2/3; vs "in the year 1887" ("in year 1887"): P 1 R 2/3 -> 4/5; vs "1889": 0
    m = qa_metrics(["in 1887", "Broncos"], [["1887", "in the year 1887", "1889"], "Denver Broncos"])
    assert set(m) == {"exact", "f1", "total"}  # every question has an answer: v1.1 keys only
    assert m["exact"] == 0.0
    assert m["f1"] == pytest.approx(100 * (4 / 5 + 2 / 3) / 2)
    assert m["total"] == 2


def test_squad_v2_groups_like_the_official_script():
    preds = ["the Denver Broncos", "Panthers team", "", "", "Levi's Stadium"]
    refs = [["Denver Broncos"], ["Carolina Panthers", "Panthers"], ["Santa Clara"], [], []]
    # per question (exact, f1): (1, 1), (0, 2/3), (0, 0) answerable predicted empty, (1, 1) no answer
    # predicted empty, (0, 0) no answer predicted text
    m = qa_metrics(preds, refs)
    expected = {
        "exact": 40.0,
        "f1": 100 * (8 / 3) / 5,
        "total": 5,
        "HasAns_exact": 100 / 3,
        "HasAns_f1": 100 * (5 / 3) / 3,
        "HasAns_total": 3,
        "NoAns_exact": 50.0,
        "NoAns_f1": 50.0,
        "NoAns_total": 2,
    }
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-9), key


def test_squad_v2_switches():
    m = qa_metrics(["x"], [["x"]], version_2=True)
    assert m["HasAns_total"] == 1 and "NoAns_total" not in m
    m = qa_metrics([""], [""])  # an empty string reference is an unanswerable question
    assert m == {
        "exact": 100.0,
        "f1": 100.0,
        "total": 1,
        "NoAns_exact": 100.0,
        "NoAns_f1": 100.0,
        "NoAns_total": 1,
    }
    # a listed gold answer that normalises to nothing is scored as no answer, but counts as HasAns
    m = qa_metrics([""], [["The"]], version_2=True)
    assert m["exact"] == 100.0 and m["HasAns_total"] == 1
    with pytest.raises(LmforgeError, match=r"^question 2 has no gold answer; SQuAD v1.1 needs one"):
        qa_metrics(["a", "b"], [["a"], []], version_2=False)


WORDS = st.sampled_from(["a", "an", "the", "The", "cat", "Cat.", "dog", "dog,", "1887", "!", "x-y", "café"])
TEXTS = st.lists(WORDS, max_size=8).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(TEXTS, TEXTS)
def test_squad_f1_is_symmetric_bounded_and_at_least_exact(a, b):
    f1 = squad_f1(a, b)
    assert f1 == pytest.approx(squad_f1(b, a))
    assert 0.0 <= f1 <= 1.0
    assert squad_exact(a, b) <= f1
    assert squad_f1(a, a) == 1.0


# ---- BLEU and ROUGE ------------------------------------------------------------------------------------------


def test_bleu_by_hand():
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths: BP 1
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(100 * (1 / 12) ** 0.25)
    # all precisions 1, hypothesis 4 tokens against 6: BP exp(1 - 6/4)
    assert bleu(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(100 * math.exp(-0.5))
    # corpus BLEU sums the counts over sentences: 9/10, 6/8, 4/6, 2/4 and BP exp(1 - 12/10)
    corpus = bleu(
        ["the cat sat on the mat", "the cat sat on"], ["the cat sat on a mat", "the cat sat on the mat"]
    )
    assert corpus == pytest.approx(100 * math.exp(-0.2) * (9 / 10 * 6 / 8 * 4 / 6 * 2 / 4) ** 0.25)


def test_bleu_tokenizes_with_13a_and_takes_several_references():
    assert bleu(["Hello, big wide world!"], ["Hello , big wide world !"]) == pytest.approx(100.0)
    refs = [["the cat sat on a mat", "the cat sat on the mat"], ["a b c d e"]]  # ragged reference lists
    assert bleu(["the cat sat on the mat", "a b c d e"], refs) == pytest.approx(100.0)


def test_missing_sacrebleu_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # makes `import sacrebleu` raise ImportError
    with pytest.raises(LmforgeError, match=r"pip install 'lmforge\[eval\]'"):
        bleu(["a"], ["a"])


def test_rouge_tokenizer_is_rouge_scores_default():
    assert rouge_tokens("The Cat's-bed, 42!") == ["the", "cat", "s", "bed", "42"]
    assert rouge_tokens("café 日本 running") == ["caf", "running"]  # ASCII only, no stemming


def test_rouge_by_hand():
    pred, ref = "the cat was found under the bed", "the cat was under the bed"
    # unigrams: 6 of 7 predicted, 6 of 6 reference; bigrams: 4 of 6, 4 of 5; LCS 6
    assert rouge_n(pred, ref, 1) == pytest.approx((6 / 7, 1.0, 12 / 13))
    assert rouge_n(pred, ref, 2) == pytest.approx((4 / 6, 4 / 5, 8 / 11))
    assert rouge_l(pred, ref) == pytest.approx((6 / 7, 1.0, 12 / 13))
    # order matters for LCS and bigrams, not for unigrams
    assert rouge_n("b a c", "a b c", 1) == pytest.approx((1.0, 1.0, 1.0))
    assert rouge_n("b a c", "a b c", 2) == (0.0, 0.0, 0.0)
    assert rouge_l("b a c", "a b c") == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert rouge_l("", "a b") == (0.0, 0.0, 0.0)


def test_rouge_lsum_matches_sentences_across_lines():
    # as one sequence the LCS is 2 of 4; per sentence, each reference line is found whole
    assert rouge_l("a b\nc d", "c d\na b") == pytest.approx((0.5, 0.5, 0.5))
    assert rouge_lsum("a b\nc d", "c d\na b") == pytest.approx((1.0, 1.0, 1.0))
    # one reference token can be matched once, however many predicted lines contain it
    assert rouge_lsum("a\na", "a") == pytest.approx((0.5, 1.0, 2 / 3))
    # which LCS counts matters: for "a b" against "b a" rouge-score's backtracking picks "a" (ties move
    # up), which the first reference line already used up, so only 1 of 3 reference tokens is a hit
    assert rouge_lsum("b a", "a\na b") == pytest.approx((1 / 2, 1 / 3, 0.4))
    assert rouge_lsum("a b", "a b") == rouge_l("a b", "a b")
    assert rouge_lsum("\n\n", "a") == (0.0, 0.0, 0.0)


def test_rouge_averages_examples_and_takes_the_best_reference():
    m = rouge(["a b c", "x"], [["a b c d", "z z"], "y"])
    # example 1 against "a b c d": P 1, R 3/4, F 6/7 (ROUGE-1); example 2 scores 0
    assert m["rouge1"] == pytest.approx(6 / 7 / 2)
    assert m["rouge1_precision"] == pytest.approx(0.5)
    assert m["rouge1_recall"] == pytest.approx(3 / 8)
    assert m["rouge2"] == pytest.approx(2 * (1 * 2 / 3) / (1 + 2 / 3) / 2)
    assert set(m) == {
        f"{t}{s}" for t in ("rouge1", "rouge2", "rougeL", "rougeLsum") for s in ("", "_precision", "_recall")
    }


@settings(max_examples=100, deadline=None)
@given(TEXTS, TEXTS)
def test_rouge_properties(a, b):
    p, r, f = rouge_n(a, b, 1)
    assert rouge_n(b, a, 1) == pytest.approx((r, p, f))  # swapping sides swaps precision and recall
    assert rouge_l(a, b)[2] <= f + 1e-12  # an LCS is a clipped unigram match
    assert all(0.0 <= v <= 1.0 for v in (*rouge_n(a, b, 2), *rouge_l(a, b), *rouge_lsum(a, b)))


def test_seq2seq_metrics_and_errors():
    m = seq2seq_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert m["bleu"] == pytest.approx(100.0) and m["rougeL"] == 1.0 and m["rouge2_recall"] == 1.0
    with pytest.raises(LmforgeError, match="reference 1 is not a text or a non-empty list of texts"):
        rouge(["a"], [[]])
    with pytest.raises(LmforgeError, match="1 predictions but 2 references"):
        seq2seq_metrics(["a"], ["a", "b"])
    with pytest.raises(LmforgeError, match=r"^prediction 2 is not a text: None$"):
        bleu(["a", None], ["a", "b"])


# ---- perplexity, the entry point, the table -------------------------------------------------------------------


def test_perplexity_and_overflow():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(50.0)) == pytest.approx(50.0)
    assert perplexity(1000.0) == math.inf  # math.exp would raise OverflowError
    assert math.isnan(perplexity(float("nan")))
    m = lm_metrics(loss_sum=40 * math.log(7.0), n_tokens=40)
    assert m["loss"] == pytest.approx(math.log(7.0)) and m["perplexity"] == pytest.approx(7.0)
    assert m["tokens"] == 40
    with pytest.raises(LmforgeError, match="no tokens to evaluate"):
        lm_metrics(0.0, 0)


def test_compute_metrics_dispatches_per_task_family():
    assert compute_metrics("classification", PREDS, REFS) == classification_metrics(PREDS, REFS)
    assert compute_metrics("qa", ["x"], [["x"]])["exact"] == 100.0
    assert compute_metrics("seq2seq", ["a b c d"], ["a b c d"])["bleu"] == pytest.approx(100.0)
    assert compute_metrics("lm", 3.0, 3)["perplexity"] == pytest.approx(math.e)
    with pytest.raises(
        LmforgeError, match=r"^unknown task 'ner'; tasks with metrics: classification, qa, seq2seq, lm$"
    ):
        compute_metrics("ner", [], [])


def test_format_table_aligns_two_columns():
    table = format_table(
        {"accuracy": 0.5, "total": 10, "perplexity": math.inf, "macro_f1": 2 / 3, "f1/a": 1.0}
    )
    assert table.split("\n") == [
        "accuracy    0.5000",
        "total           10",
        "perplexity     inf",
        "macro_f1    0.6667",
        "f1/a        1.0000",
    ]
    assert format_table({}) == ""
    assert format_table({"ppl": 1.5e12}) == "ppl  1.5e+12"
