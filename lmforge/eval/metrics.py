"""Task metrics as pure functions: lists of predictions and references in, a flat dict of numbers out.

Each metric follows the definition of the source that the published numbers use, on that source's scale:
- Classification (scale 0-1): accuracy; per-class precision = TP / (TP + FP), recall = TP / (TP + FN),
  F1 = 2PR / (P + R), and their macro (unweighted mean over classes), weighted (mean weighted by the
  number of references of each class) and micro (from the summed counts) averages, as scikit-learn's
  `precision_recall_fscore_support` computes them. A ratio with a zero denominator is 0, scikit-learn's
  default (`zero_division="warn"` returns 0), without a warning. The confusion matrix has one row per
  reference class and one column per predicted class (scikit-learn's convention).
- Extractive QA (scale 0-100): the official SQuAD evaluation scripts (v1.1, and evaluate-v2.0.py,
  Rajpurkar et al. 2016, 2018). Answers are normalised (lower case, punctuation removed, the articles
  a/an/the removed, whitespace collapsed); exact match is 1 when the normalised strings are equal, F1 is
  the harmonic mean of precision and recall of the bag of normalised tokens; each takes the maximum over
  the gold answers. An unanswerable question (no gold answer) scores 1 for an empty prediction and 0 for
  any other; an answerable one scores 0 for an empty prediction. The v1.1 and v2.0 scripts agree except
  where both texts normalise to nothing (v1.1 F1 0, v2.0 F1 1); this module follows v2.0 throughout, so
  exact <= F1 always holds.
- BLEU (scale 0-100): corpus BLEU (Papineni et al. 2002) computed by sacrebleu (Post 2018) with its
  defaults: tokenizer 13a, 4-grams, exponential smoothing off, brevity penalty over the whole corpus.
- ROUGE (scale 0-1): ROUGE-1, ROUGE-2 (n-gram overlap) and ROUGE-L (longest common subsequence,
  sentence level), ROUGE-Lsum (summary-level LCS over newline-separated sentences) (Lin 2004), exactly as
  Google's `rouge-score` package computes them with its default tokenizer and no stemming: lower case,
  every run of characters other than a-z and 0-9 becomes a space, split. Each example scores precision,
  recall and F-measure against its best reference (the highest F), and scores are averaged over examples.
- Perplexity: exp of the mean token cross-entropy in nats (Jelinek et al. 1977).
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Sequence

import numpy as np

from lmforge.errors import LmforgeError

_MAX_LISTED_LABELS = 20


def _check_pairs(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise LmforgeError(
            f"{len(predictions)} predictions but {len(references)} references; pass one prediction per reference"
        )
    if len(predictions) == 0:  # not `not predictions`: NumPy arrays have no truth value
        raise LmforgeError("no examples to evaluate: predictions and references are empty")


def _list_labels(labels: Sequence) -> str:
    shown = ", ".join(str(label) for label in labels[:_MAX_LISTED_LABELS])
    more = len(labels) - _MAX_LISTED_LABELS
    return shown + (f", ... ({more} more)" if more > 0 else "")


def unknown_label_error(label, line: int, labels: Sequence, path=None) -> LmforgeError:
    """The one-line error for a label at evaluation that the model's label map does not know."""
    where = f"line {line}" + (f" of {path}" if path is not None else "")
    return LmforgeError(
        f"label {label!r} at {where} is not one of the model's labels: {_list_labels(labels)}"
    )


# ---- classification ---------------------------------------------------------------------------------------


def accuracy(predictions: Sequence, references: Sequence) -> float:
    """The fraction of predictions equal to their reference."""
    _check_pairs(predictions, references)
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def confusion_matrix(predictions: Sequence, references: Sequence, labels: Sequence | None = None):
    """Counts (K, K) int64: row i is reference labels[i], column j prediction labels[j]; returns (matrix, labels).

    Without `labels` the classes are the sorted union of references and predictions.
    """
    _check_pairs(predictions, references)
    if labels is None:
        labels = _sorted_labels(set(references) | set(predictions))
    labels = list(labels)
    index = {label: i for i, label in enumerate(labels)}
    if len(index) != len(labels):
        raise LmforgeError(f"labels repeat: {_list_labels(labels)}; pass each label once")
    matrix = np.zeros((len(labels), len(labels)), np.int64)
    for n, (pred, ref) in enumerate(zip(predictions, references), start=1):
        for what, label in (("reference", ref), ("prediction", pred)):
            if label not in index:
                raise LmforgeError(
                    f"{what} {label!r} of example {n} is not one of the labels: {_list_labels(labels)}"
                )
        matrix[index[ref], index[pred]] += 1
    return matrix, labels


def _sorted_labels(labels: set) -> list:
    try:
        return sorted(labels)
    except TypeError:  # mixed kinds (ints and strings): order by text
        return sorted(labels, key=str)


def _ratio(num, den) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def classification_metrics(
    predictions: Sequence, references: Sequence, labels: Sequence | None = None
) -> dict:
    """Accuracy, macro/weighted/micro precision, recall and F1, and per-class values ("f1/LABEL")."""
    matrix, labels = confusion_matrix(predictions, references, labels)
    tp = np.diag(matrix)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)  # per class: references, predictions
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    micro_p, micro_r = _ratio(tp.sum(), predicted.sum()), _ratio(tp.sum(), support.sum())
    weights = _ratio(support, support.sum())
    out = {
        "accuracy": accuracy(predictions, references),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_precision": float((weights * precision).sum()),
        "weighted_recall": float((weights * recall).sum()),
        "weighted_f1": float((weights * f1).sum()),
        "micro_f1": float(_ratio(2 * micro_p * micro_r, micro_p + micro_r)),
    }
    for i, label in enumerate(labels):
        out[f"precision/{label}"] = float(precision[i])
        out[f"recall/{label}"] = float(recall[i])
        out[f"f1/{label}"] = float(f1[i])
        out[f"support/{label}"] = int(support[i])
    return out


# ---- extractive question answering (SQuAD) ----------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lower case, drop punctuation, drop a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, gold: str) -> float:
    """1.0 when prediction and gold answer are equal after normalisation, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 between normalised answers; two answers without tokens score 1 (SQuAD v2.0)."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(predictions: Sequence[str], references: Sequence, version_2: bool | None = None) -> dict:
    """SQuAD "exact" and "f1" (0-100) and "total"; references are gold answer lists (or one string each).

    SQuAD v2.0 (`version_2`, by default whenever a question has no gold answer) adds HasAns_* and NoAns_*
    for whichever of the two groups occur, as the official v2.0 script does.
    """
    _check_pairs(predictions, references)
    exact, f1, has_answer = [], [], []
    for n, (pred, golds) in enumerate(zip(predictions, references), start=1):
        golds = ([golds] if golds else []) if isinstance(golds, str) else list(golds)
        if not golds and version_2 is False:
            raise LmforgeError(
                f"question {n} has no gold answer; SQuAD v1.1 needs one (use version_2 for v2.0)"
            )
        # NOTE: like the v2.0 script, gold answers that normalise to nothing count as no answer for scoring,
        # while the question still counts as answerable (HasAns) because it lists one.
        scored = [gold for gold in golds if normalize_answer(gold)] or [""]
        exact.append(max(squad_exact(pred, gold) for gold in scored))
        f1.append(max(squad_f1(pred, gold) for gold in scored))
        has_answer.append(bool(golds))
    exact, f1, has_answer = np.array(exact), np.array(f1), np.array(has_answer)
    out = _squad_group("", exact, f1)
    if version_2 or (version_2 is None and not has_answer.all()):
        for prefix, group in (("HasAns_", has_answer), ("NoAns_", ~has_answer)):
            if group.any():
                out.update(_squad_group(prefix, exact[group], f1[group]))
    return out


def _squad_group(prefix: str, exact: np.ndarray, f1: np.ndarray) -> dict:
    return {
        f"{prefix}exact": 100.0 * float(exact.sum()) / len(exact),  # the script's order of operations
        f"{prefix}f1": 100.0 * float(f1.sum()) / len(f1),
        f"{prefix}total": len(exact),
    }


# ---- text generation: BLEU and ROUGE ----------------------------------------------------------------------


def _reference_lists(predictions: Sequence, references: Sequence) -> list[list[str]]:
    """Each reference as a list of one or more texts, after checking that every prediction is a text."""
    _check_pairs(predictions, references)
    for n, pred in enumerate(predictions, start=1):
        if not isinstance(pred, str):
            raise LmforgeError(f"prediction {n} is not a text: {pred!r}")
    lists = []
    for n, ref in enumerate(references, start=1):
        texts = [ref] if isinstance(ref, str) else list(ref)
        if not texts or not all(isinstance(text, str) for text in texts):
            raise LmforgeError(f"reference {n} is not a text or a non-empty list of texts: {ref!r}")
        lists.append(texts)
    return lists


def bleu(predictions: Sequence[str], references: Sequence) -> float:
    """Corpus BLEU (0-100) by sacrebleu's defaults; a reference may be a list of alternative texts."""
    refs = _reference_lists(predictions, references)
    try:
        import sacrebleu
    except ImportError:
        raise LmforgeError("BLEU needs the sacrebleu package: pip install 'lmforge[eval]'") from None
    # sacrebleu takes one stream per reference position; None marks an example with fewer references
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(max(map(len, refs)))]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokenizer without stemming.

    NOTE: only ASCII letters and digits survive, so accented letters, CJK and other scripts are dropped;
    that is what rouge-score does and what published ROUGE numbers mean.
    """
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


def _prf(hits: int, n_pred: int, n_ref: int) -> tuple[float, float, float]:
    """(precision, recall, F-measure) from matched units; an empty side scores 0."""
    precision, recall = hits / max(n_pred, 1), hits / max(n_ref, 1)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f


def rouge_n(prediction: str, reference: str, n: int) -> tuple[float, float, float]:
    """ROUGE-N (precision, recall, F): clipped n-gram matches over predicted and reference n-grams."""
    pred, ref = _ngrams(rouge_tokens(prediction), n), _ngrams(rouge_tokens(reference), n)
    hits = sum((pred & ref).values())
    return _prf(hits, sum(pred.values()), sum(ref.values()))


def _ngrams(tokens: list[str], n: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _lcs_table(ref: list[str], pred: list[str]) -> list[list[int]]:
    table = [[0] * (len(pred) + 1) for _ in range(len(ref) + 1)]
    for i, r in enumerate(ref, start=1):
        for j, p in enumerate(pred, start=1):
            table[i][j] = table[i - 1][j - 1] + 1 if r == p else max(table[i - 1][j], table[i][j - 1])
    return table


def rouge_l(prediction: str, reference: str) -> tuple[float, float, float]:
    """ROUGE-L (precision, recall, F): longest common subsequence of the two token sequences."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    if not pred or not ref:
        return 0.0, 0.0, 0.0
    return _prf(_lcs_table(ref, pred)[-1][-1], len(pred), len(ref))


def _lcs_positions(ref: list[str], pred: list[str]) -> set[int]:
    """Positions in ref of one LCS, chosen by rouge-score's backtracking (ties move up, not left)."""
    table, i, j, positions = _lcs_table(ref, pred), len(ref), len(pred), set()
    while i > 0 and j > 0:
        if ref[i - 1] == pred[j - 1]:
            positions.add(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return positions


def rouge_lsum(prediction: str, reference: str) -> tuple[float, float, float]:
    """ROUGE-Lsum (precision, recall, F): union LCS of each reference sentence against all predicted ones.

    Sentences are the non-empty lines; a token counts at most as often as it occurs on both sides.
    """
    pred = [rouge_tokens(line) for line in prediction.split("\n") if line]
    ref = [rouge_tokens(line) for line in reference.split("\n") if line]
    n_pred, n_ref = sum(map(len, pred)), sum(map(len, ref))
    if not n_pred or not n_ref:
        return 0.0, 0.0, 0.0
    left_pred = collections.Counter(t for sentence in pred for t in sentence)
    left_ref = collections.Counter(t for sentence in ref for t in sentence)
    hits = 0
    for sentence in ref:
        union = set().union(*(_lcs_positions(sentence, p) for p in pred))
        for token in (sentence[i] for i in sorted(union)):
            if left_pred[token] > 0 and left_ref[token] > 0:
                hits += 1
                left_pred[token] -= 1
                left_ref[token] -= 1
    return _prf(hits, n_pred, n_ref)


ROUGE_TYPES = {
    "rouge1": lambda pred, ref: rouge_n(pred, ref, 1),
    "rouge2": lambda pred, ref: rouge_n(pred, ref, 2),
    "rougeL": rouge_l,
    "rougeLsum": rouge_lsum,
}


def rouge(predictions: Sequence[str], references: Sequence) -> dict:
    """Mean ROUGE over examples: "rouge1" (F), "rouge1_precision", "rouge1_recall", ... for every ROUGE type.

    With several references an example takes, per ROUGE type, the scores of the reference with the highest
    F-measure (the first of equals), as rouge-score's `score_multi` does.
    """
    refs = _reference_lists(predictions, references)
    out = {}
    for name, score in ROUGE_TYPES.items():
        best = [
            max((score(pred, r) for r in rs), key=lambda prf: prf[2]) for pred, rs in zip(predictions, refs)
        ]
        precision, recall, f = np.mean(np.array(best, np.float64), axis=0)
        out.update({name: float(f), f"{name}_precision": float(precision), f"{name}_recall": float(recall)})
    return out


def seq2seq_metrics(predictions: Sequence[str], references: Sequence) -> dict:
    """BLEU (sacrebleu) and ROUGE-1/2/L/Lsum for generated texts."""
    return {"bleu": bleu(predictions, references), **rouge(predictions, references)}


# ---- language modelling -----------------------------------------------------------------------------------


def perplexity(mean_loss: float) -> float:
    """exp(mean token cross-entropy in nats); inf when that overflows a float, nan for a nan loss."""
    try:
        return math.exp(float(mean_loss))
    except OverflowError:
        return math.inf


def lm_metrics(loss_sum: float, n_tokens: int) -> dict:
    """Mean token loss and perplexity from a summed token cross-entropy and the number of tokens."""
    if n_tokens <= 0:
        raise LmforgeError("no tokens to evaluate; pass a non-empty evaluation set")
    loss = float(loss_sum) / n_tokens
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": int(n_tokens)}


# ---- one entry point per task family, and the printed table -----------------------------------------------

TASKS = {
    "classification": classification_metrics,
    "qa": qa_metrics,
    "seq2seq": seq2seq_metrics,
    "lm": lm_metrics,
}


def compute_metrics(task: str, *args, **kwargs) -> dict:
    """The metrics of a task family: classification and qa and seq2seq take (predictions, references, ...),
    lm takes (loss_sum, n_tokens)."""
    if task not in TASKS:
        raise LmforgeError(f"unknown task {task!r}; tasks with metrics: {', '.join(TASKS)}")
    return TASKS[task](*args, **kwargs)


def format_table(metrics: dict) -> str:
    """Two aligned columns, names left and values right: counts as integers, other values with 4 decimals."""
    if not metrics:
        return ""
    values = [_format_value(v) for v in metrics.values()]
    name_width, value_width = max(map(len, map(str, metrics))), max(map(len, values))
    return "\n".join(f"{name!s:<{name_width}}  {v:>{value_width}}" for name, v in zip(metrics, values))


def _format_value(value) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    return f"{value:.4f}" if math.isfinite(value) and abs(value) < 1e9 else f"{value:.4g}"
