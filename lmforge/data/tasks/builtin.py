"""Built-in fine-tuning tasks made from the Python standard library: real text, no download.

The functions are those of named packages of the running interpreter's standard library (the files that
`lmforge.data.sources.builtin_corpus_files` lists for them, test suites left out): module-level functions
and methods of module-level classes (nested classes too), found with `ast` and cut out of their file by
the line span it gives (the `def` line to the end, decorators left out), dedented. A function's code is
that text with its docstring lines removed; functions whose body is only a docstring are skipped, and so is every
code text that occurs more than once (copies would leak between splits).

Tasks:
- "stdlib-package", classification: which package a function comes from, among CLASSIFICATION_PACKAGES
  (asyncio, email, multiprocessing, tkinter, unittest, xml). The text is the code without its docstring:
  docstrings often name their subject outright, and the same input serves both tasks. Classes are balanced:
  each package keeps as many functions as the smallest one has, those with the lowest hash of their name.
- "stdlib-docstring", summarisation (seq2seq): code without docstring -> the first line of its docstring,
  for functions of SUMMARIZATION_PACKAGES whose first docstring line has at least MIN_SUMMARY_WORDS words.
- "stdlib-instruct", instruction tuning (Alpaca JSON Lines): the stdlib-docstring pairs as
  {"instruction": INSTRUCTION, "input": code, "output": first docstring line}, in the same splits.
- "stdlib-qa", extractive QA in SQuAD v2.0 JSON: the context is a docstring (functions of
  SUMMARIZATION_PACKAGES), the question "What does Class.method return?"; the answer is X where the
  docstring says "Return(s) X" (to the end of that sentence or line), and docstrings that never mention
  "return" give unanswerable questions, a third as many as the answerable ones (lowest name hashes).

Splits are fixed by a hash of the qualified name (sha256 of "email.message.Message.get_payload"): 80% train,
10% validation, 10% test, so the same function always falls in the same split and no name is in two. Sizes
depend on the Python version; on CPython 3.11: stdlib-package 2,388 functions (398 per class;
train/validation/test 1,918/226/244), stdlib-docstring 2,173 pairs (1,719/221/233), stdlib-qa 809
questions, 607 answerable (636/79/94).

Baselines (`baseline_predictions`): the majority class of the training split (accuracy about 1/6 on a
balanced test split); for summarisation the first line of the code (its `def` line); for QA the first
line of the context; for instruct, the first line of the input. `write_task` writes the splits (JSON Lines; SQuAD JSON for QA) and summary.json.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
import sysconfig
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lmforge.errors import LmforgeError

INSTRUCTION = "Summarize this Python function in one line."
CLASSIFICATION_PACKAGES = ("asyncio", "email", "multiprocessing", "tkinter", "unittest", "xml")
SUMMARIZATION_PACKAGES = (
    *CLASSIFICATION_PACKAGES,
    *("collections", "concurrent", "http", "importlib", "json", "logging", "urllib"),
)
SPLITS = ("train", "validation", "test")
MIN_SUMMARY_WORDS = 3
# "Return the root of the message structure." -> "the root of the message structure": up to the end of
# the sentence or line (a dot followed by a letter, as in "os.path", does not end it).
_RETURNS = re.compile(r"\bReturns? ((?:[^.\n]|\.\w)+)")


@dataclass(frozen=True)
class StdlibFunction:
    name: str  # qualified: "email.message.Message.get_payload"
    package: str  # the top-level package: "email"
    code: str  # the function's source, dedented, without its docstring
    docstring: str | None  # cleaned (inspect.cleandoc), or None


def split_of(name: str) -> str:
    """ "train", "validation" or "test", fixed by the name's sha256 (80/10/10)."""
    bucket = _hash(name) % 100
    return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


def _hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def stdlib_functions(packages: Sequence[str]) -> list[StdlibFunction]:
    """The functions of these top-level standard library packages (or modules), sorted by name, each code
    text unique."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    functions = []
    for path in _package_files(stdlib, packages):
        module = ".".join(path.relative_to(stdlib).with_suffix("").parts).removesuffix(".__init__")
        functions.extend(_file_functions(str(path), module))
    counts = Counter(f.code for f in functions)
    unique = [f for f in functions if counts[f.code] == 1]
    if not unique:
        raise LmforgeError(f"found no functions in the standard library packages {', '.join(packages)}")
    return sorted(unique, key=lambda f: f.name)


def heldout_corpus_files() -> list[Path]:
    """The built-in corpus without the files of SUMMARIZATION_PACKAGES: pretraining text that never holds a
    docstring (or code) of the stdlib-docstring, stdlib-instruct or stdlib-qa splits, so that a model
    pretrained on it and fine-tuned on those tasks is scored on text it has never seen.

    `lmforge pretrain --data $(python -c "from lmforge.data.tasks import heldout_corpus_files as f; print(*f())")`
    """
    from lmforge.data.sources import builtin_corpus_files

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [
        f
        for f in builtin_corpus_files()
        if f.relative_to(stdlib).parts[0].removesuffix(".py") not in SUMMARIZATION_PACKAGES
    ]


def _package_files(stdlib: Path, packages: Sequence[str]) -> list[Path]:
    """`*.py` of the packages, without their test suites: the files `builtin_corpus_files` lists for them
    (listed here directly, as walking the whole library takes seconds)."""
    files = []
    for package in packages:
        if (stdlib / f"{package}.py").is_file():
            files.append(stdlib / f"{package}.py")
        for path in sorted((stdlib / package).rglob("*.py")):
            parts = path.relative_to(stdlib).parts
            if not {"test", "tests", "idle_test"}.intersection(parts[:-1]) and not parts[-1].startswith(
                "test_"
            ):
                files.append(path)
    return sorted(files)


@functools.cache
def _file_functions(path: str, module: str) -> tuple[StdlibFunction, ...]:
    source = Path(path).read_text(encoding="utf-8")
    try:
        tree = ast.parse(source)
    except SyntaxError:  # a file for another Python version: nothing to learn from here
        return ()
    lines = source.splitlines()
    seen: Counter[str] = Counter()
    functions = []
    for prefix, node in _definitions(tree.body, module):
        name = f"{prefix}.{node.name}"
        seen[name] += 1
        if seen[name] > 1:  # a redefinition (say a property's setter): keep names unique
            name = f"{name}#{seen[name]}"
        code = _code_without_docstring(node, lines)
        if code is not None:
            docstring = ast.get_docstring(node)
            functions.append(StdlibFunction(name, module.split(".")[0], code, docstring))
    return tuple(functions)


def _definitions(body: list[ast.stmt], prefix: str):
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix, node
        elif isinstance(node, ast.ClassDef):
            yield from _definitions(node.body, f"{prefix}.{node.name}")


def _code_without_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> str | None:
    """The function's lines from `def` to its end, dedented, docstring lines left out; None when nothing
    but the docstring is left or the docstring shares a line with other code."""
    first, last = node.lineno - 1, node.end_lineno  # 0-based [first, last)
    body = node.body
    if ast.get_docstring(node, clean=False) is not None:
        docstring, body = body[0], body[1:]
        if not body or docstring.lineno == node.lineno or body[0].lineno == docstring.end_lineno:
            return None
        kept = lines[first : docstring.lineno - 1] + lines[docstring.end_lineno : last]
    else:
        kept = lines[first:last]
    return textwrap.dedent("\n".join(kept)).strip("\n")


def _summary(docstring: str | None) -> str | None:
    if not docstring:
        return None
    line = docstring.strip().splitlines()[0].strip()
    return line if len(line.split()) >= MIN_SUMMARY_WORDS else None


class BuiltinTask:
    """One built-in task: its rows (each with the qualified `name` that fixes its split), the baseline's
    predictions, what summary.json reports beside the split sizes, and its files."""

    name: ClassVar[str]

    def rows(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def baseline(
        self, rows: Sequence[dict[str, Any]], train: Sequence[dict[str, Any]] | None = None
    ) -> list[str]:
        """A trivial model's prediction for each row (it may learn from the `train` rows)."""
        raise NotImplementedError

    def report(self, splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        """summary.json's entries beside the task and the split sizes: the baseline's scores."""
        raise NotImplementedError

    def files(self, splits: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
        """{file name: text}: one JSON Lines file per split."""
        return {
            f"{split}.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            for split, rows in splits.items()
        }


class StdlibPackage(BuiltinTask):
    """Classification: which of CLASSIFICATION_PACKAGES a function comes from, classes balanced."""

    name = "stdlib-package"

    def rows(self) -> list[dict[str, Any]]:
        functions = stdlib_functions(CLASSIFICATION_PACKAGES)
        by_package = {p: [f for f in functions if f.package == p] for p in CLASSIFICATION_PACKAGES}
        per_class = min(len(fs) for fs in by_package.values())
        chosen = [
            f for fs in by_package.values() for f in sorted(fs, key=lambda f: _hash(f.name))[:per_class]
        ]
        return [
            {"name": f.name, "text": f.code, "label": f.package} for f in sorted(chosen, key=lambda f: f.name)
        ]

    def baseline(self, rows, train=None) -> list[str]:
        """The majority label of the training rows (ties go to the first in sorted order)."""
        if not train:
            raise LmforgeError("the majority-class baseline needs the training rows; pass train=")
        counts = Counter(row["label"] for row in train)
        majority = min(counts, key=lambda label: (-counts[label], label))
        return [majority] * len(rows)

    def report(self, splits) -> dict[str, Any]:
        predictions = self.baseline(splits["test"], splits["train"])
        correct = sum(p == r["label"] for p, r in zip(predictions, splits["test"]))
        return {
            "label_counts": {
                s: dict(sorted(Counter(r["label"] for r in rows).items())) for s, rows in splits.items()
            },
            "baseline": {"majority_label": predictions[0], "test_accuracy": correct / len(predictions)},
        }


class _FirstLineBaseline(BuiltinTask):
    """A task whose baseline answers with the first line of a field of the row, scored on the
    validation and test splits."""

    field: ClassVar[str]  # the row field whose first line is the baseline's prediction
    prediction: ClassVar[str]  # that prediction, in words (summary.json)

    def baseline(self, rows, train=None) -> list[str]:
        return [row[self.field].strip().splitlines()[0].strip() for row in rows]

    def scores(self, rows: list[dict[str, Any]]) -> dict[str, float]:
        """The baseline's scores on one split."""
        raise NotImplementedError

    def report(self, splits) -> dict[str, Any]:
        scores = {split: self.scores(splits[split]) for split in ("validation", "test")}
        return {"baseline": {"prediction": self.prediction, **scores}}


class StdlibDocstring(_FirstLineBaseline):
    """Summarisation (seq2seq): code without its docstring -> the docstring's first line."""

    name = "stdlib-docstring"
    field, target = "source", "target"
    prediction = "the first line of the code (its def line)"

    def rows(self) -> list[dict[str, Any]]:
        pairs = [(f, _summary(f.docstring)) for f in stdlib_functions(SUMMARIZATION_PACKAGES)]
        return [{"name": f.name, "source": f.code, "target": s} for f, s in pairs if s is not None]

    def scores(self, rows) -> dict[str, float]:
        """ROUGE: the pure-Python metric, so that writing a task never needs the optional BLEU package."""
        from lmforge.eval.metrics import rouge

        scores = rouge(self.baseline(rows), [r[self.target] for r in rows])
        return {k: scores[k] for k in ("rouge1", "rouge2", "rougeL")}


class StdlibInstruct(StdlibDocstring):
    """Instruction tuning (Alpaca JSON Lines): the stdlib-docstring pairs as instructions."""

    name = "stdlib-instruct"
    field, target = "input", "output"
    prediction = "the first line of the input (the def line)"

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"name": r["name"], "instruction": INSTRUCTION, "input": r["source"], "output": r["target"]}
            for r in super().rows()
        ]


class StdlibQA(_FirstLineBaseline):
    """Extractive QA in SQuAD v2.0 JSON: "What does Class.method return?" on docstrings."""

    name = "stdlib-qa"
    field = "context"
    prediction = "the first line of the context"

    def rows(self) -> list[dict[str, Any]]:
        return _qa_rows(stdlib_functions(SUMMARIZATION_PACKAGES))

    def scores(self, rows) -> dict[str, float]:
        from lmforge.eval.metrics import qa_metrics

        golds = [[a["text"] for a in r["answers"]] for r in rows]  # none: unanswerable
        scores = qa_metrics(self.baseline(rows), golds, version_2=True)
        return {k: scores[k] for k in ("exact", "f1")}

    def report(self, splits) -> dict[str, Any]:
        answerable = {s: sum(not r["is_impossible"] for r in rows) for s, rows in splits.items()}
        return {**super().report(splits), "answerable": answerable}

    def files(self, splits) -> dict[str, str]:
        return {
            f"{split}.json": json.dumps(_squad_json(rows), indent=1) + "\n" for split, rows in splits.items()
        }


# The built-in tasks by name.
BUILTIN = {task.name: task for task in (StdlibPackage(), StdlibDocstring(), StdlibQA(), StdlibInstruct())}
TASKS = tuple(BUILTIN)  # their names


def _task(name: str) -> BuiltinTask:
    if name not in BUILTIN:
        raise LmforgeError(f"unknown built-in task {name!r}; choose one of {', '.join(TASKS)}")
    return BUILTIN[name]


def build_task(task: str) -> dict[str, list[dict[str, Any]]]:
    """The rows of a built-in task, per split: {"name", "text", "label"} for stdlib-package,
    {"name", "source", "target"} for stdlib-docstring (see the module docstring)."""
    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for row in _task(task).rows():
        splits[split_of(row["name"])].append(row)
    return splits


def baseline_predictions(
    task: str, examples: Sequence[dict[str, Any]], train: Sequence[dict[str, Any]] | None = None
) -> list[str]:
    """A trivial model's prediction per example: the majority label of `train` (stdlib-package), or the
    first line of the code (stdlib-docstring), of the input (stdlib-instruct), of the context (stdlib-qa)."""
    return _task(task).baseline(examples, train)


def write_task(task: str, out_dir: str | Path) -> dict[str, Any]:
    """Write train, validation and test files of a built-in task (JSON Lines; SQuAD JSON for QA), and
    summary.json: the row counts per split and the baseline's scores (test accuracy and label counts for
    classification; ROUGE or SQuAD EM/F1 on validation and test); returns the summary."""
    builtin = _task(task)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LmforgeError(f"cannot create {out_dir}: {e.strerror}; choose a writable directory") from None
    splits = build_task(task)
    summary = {"task": task, "counts": {s: len(rows) for s, rows in splits.items()}, **builtin.report(splits)}
    files = {**builtin.files(splits), "summary.json": json.dumps(summary, indent=2) + "\n"}
    for name, text in files.items():
        try:
            (out_dir / name).write_text(text, encoding="utf-8")
        except OSError as e:
            raise LmforgeError(
                f"cannot write {out_dir / name}: {e.strerror}; choose a writable directory"
            ) from None
    return summary


def _qa_rows(functions: Sequence[StdlibFunction]) -> list[dict[str, Any]]:
    """SQuAD-style questions "What does Class.method return?" on docstrings: answerable when the docstring
    says "Return(s) X" (the answer is X), unanswerable when it never mentions "return" (a third as many)."""
    answerable, unanswerable = [], []
    for f in functions:
        if not f.docstring:
            continue
        short = ".".join(f.name.split("#")[0].split(".")[-2:])
        row = {"name": f.name, "context": f.docstring, "question": f"What does {short} return?"}
        match = _RETURNS.search(f.docstring)
        if match and match.group(1).rstrip(" ,;:"):
            answer = {"text": match.group(1).rstrip(" ,;:"), "answer_start": match.start(1)}
            answerable.append({**row, "answers": [answer], "is_impossible": False})
        elif "return" not in f.docstring.lower():
            unanswerable.append({**row, "answers": [], "is_impossible": True})
    unanswerable = sorted(unanswerable, key=lambda r: _hash(r["name"]))[: len(answerable) // 3]
    return sorted(answerable + unanswerable, key=lambda r: r["name"])


def _squad_json(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """SQuAD v2.0's nesting: one article of one paragraph per question."""
    data = []
    for row in rows:
        qa = {k: row[k] for k in ("question", "answers", "is_impossible")}
        data.append(
            {
                "title": row["name"],
                "paragraphs": [{"context": row["context"], "qas": [{"id": row["name"], **qa}]}],
            }
        )
    return {"version": "v2.0", "data": data}
