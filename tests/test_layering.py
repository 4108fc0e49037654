"""The import graph of lmforge/ has layers and no cycles.

Model code (lmforge.models, lmforge.nn) knows nothing of checkpoint files, training, inference or serving;
lmforge.hf, which reads and writes Hugging Face checkpoints, knows nothing of training; and no two parts
of lmforge import each other, directly or round a loop. The parts are the top-level packages
(lmforge.models, lmforge.hf, ...), the top-level modules (lmforge.config, ...) and `lmforge` itself, the
public API, which imports what it exports (`_EXPORTS`) on first use.

What counts as an import, read from the source with `ast`: every `import lmforge...` and
`from lmforge... import ...` statement, at the top of a module or inside a function (a deferred import is
a dependency all the same), and every `importlib.import_module("lmforge...")` with a literal name. A
by-name import that crosses a layer on purpose is listed in FORWARDS, with its reason.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import lmforge

LMFORGE = Path(lmforge.__file__).parent
ROOT = "lmforge"
# part -> the parts it must not import
FORBIDDEN = {
    "lmforge.models": ("lmforge.hf", "lmforge.train", "lmforge.inference", "lmforge.serve"),
    "lmforge.nn": ("lmforge.hf", "lmforge.train", "lmforge.inference", "lmforge.serve"),
    "lmforge.hf": ("lmforge.train",),
}
# (file, module imported by name) -> why it may cross a layer; it is left out of the graph.
FORWARDS = {
    ("lmforge/models/base.py", "lmforge.hf"): (
        "PretrainedModel.save_pretrained is the familiar spelling of lmforge.hf.save_model, which writes "
        "the files; the model code has no dependency on it"
    ),
}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository, e.g. lmforge/hf/peft.py
    line: int
    target: str  # the module named, e.g. lmforge.hf.checkpoint
    how: str  # "top-level", "in a function", "by name" (importlib) or "public API" (_EXPORTS)

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.target} ({self.how})"


def part_of(module: str) -> str:
    """The top-level part a module belongs to: lmforge.hf.keys -> lmforge.hf; an exported name of the
    public API (`from lmforge import load_model`) -> lmforge."""
    names = module.split(".")
    if len(names) == 1:
        return ROOT
    if (LMFORGE / names[1]).is_dir() or (LMFORGE / f"{names[1]}.py").is_file():
        return f"{ROOT}.{names[1]}"
    return ROOT


class _Collector(ast.NodeVisitor):
    def __init__(self, file: str, package: list[str]):
        self.file, self.package, self.depth, self.found = file, package, 0, []

    def _add(self, node: ast.AST, target: str, how: str | None = None) -> None:
        if target == ROOT or target.startswith(ROOT + "."):
            how = how or ("in a function" if self.depth else "top-level")
            self.found.append(Import(self.file, node.lineno, target, how))

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom):
        base = node.module.split(".") if node.module else []
        if node.level:  # relative: from the module's own package, `level - 1` packages up
            base = self.package[: len(self.package) - node.level + 1] + base
        for alias in node.names:
            # `from lmforge import hf` and `from . import heads` name a module; `from lmforge.hf import
            # load_model` (or a submodule) is in lmforge.hf whatever it names
            named = node.module is None or len(base) == 1
            self._add(node, ".".join([*base, alias.name]) if named else ".".join(base))

    def visit_Call(self, node: ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        literal = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
        if name == "import_module" and isinstance(literal, str):
            self._add(node, literal, "by name")
        self.generic_visit(node)


def imports_of(source: str, file: str) -> list[Import]:
    """Every lmforge import in a module's source (file: its path, e.g. lmforge/hf/peft.py)."""
    package = file.removesuffix(".py").split("/")[
        :-1
    ]  # lmforge/hf/peft.py, lmforge/hf/__init__.py: lmforge/hf
    collector = _Collector(file, package)
    collector.visit(ast.parse(source, filename=file))
    return list(dict.fromkeys(collector.found))  # `from lmforge.x import a, b` is one import


def lmforge_imports() -> list[Import]:
    """Every lmforge import in lmforge/, and the public API's exports as imports of lmforge/__init__.py."""
    found = []
    for path in sorted(LMFORGE.rglob("*.py")):
        file = path.relative_to(LMFORGE.parent).as_posix()
        found += imports_of(path.read_text(encoding="utf-8"), file)
    return found + public_api_imports()


def public_api_imports() -> list[Import]:
    """The modules `lmforge/__init__.py` imports by name on first use: the values of its _EXPORTS dict."""
    tree = ast.parse((LMFORGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_EXPORTS"]:
            exports = ast.literal_eval(node.value)
            return [
                Import("lmforge/__init__.py", node.lineno, t, "public API")
                for t in dict.fromkeys(exports.values())
            ]
    raise AssertionError("lmforge/__init__.py has no _EXPORTS dict of name -> module")


def _part_of_file(file: str) -> str:
    names = file.removesuffix(".py").split("/")
    return ROOT if names[1:] == ["__init__"] else f"{ROOT}.{names[1]}"


def edges() -> dict[tuple[str, str], list[Import]]:
    """(importing part, imported part) -> the imports between them, by-name forwards of FORWARDS left out."""
    graph: dict[tuple[str, str], list[Import]] = {}
    for imp in lmforge_imports():
        source, target = _part_of_file(imp.file), part_of(imp.target)
        if source != target and (imp.how != "by name" or (imp.file, target) not in FORWARDS):
            graph.setdefault((source, target), []).append(imp)
    return graph


def cycles(graph: dict[tuple[str, str], list[Import]]) -> list[list[str]]:
    """The strongly connected components of more than one part (Tarjan, 1972): each holds a cycle."""
    successors: dict[str, set[str]] = {}
    for a, b in graph:
        successors.setdefault(a, set()).add(b)
        successors.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(successors[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(successors):
        if v not in index:
            visit(v)
    return found


def test_every_kind_of_import_is_seen():
    source = (
        "import importlib\n"
        "import lmforge\n"
        "from lmforge.hf.checkpoint import save_model\n"
        "from lmforge import config, load_model\n"
        "from . import heads\n"
        "from .bert import Bert\n"
        "def f():\n"
        "    from lmforge.train.loss import IGNORE_INDEX\n"
        "    return importlib.import_module('lmforge.inference')\n"
    )
    found = [(i.line, i.target, i.how) for i in imports_of(source, "lmforge/models/base.py")]
    assert found == [
        (2, "lmforge", "top-level"),
        (3, "lmforge.hf.checkpoint", "top-level"),
        (4, "lmforge.config", "top-level"),
        (4, "lmforge.load_model", "top-level"),
        (5, "lmforge.models.heads", "top-level"),
        (6, "lmforge.models.bert", "top-level"),
        (8, "lmforge.train.loss", "in a function"),
        (9, "lmforge.inference", "by name"),
    ]
    assert [part_of(t) for _, t, _ in found] == [
        "lmforge",
        "lmforge.hf",
        "lmforge.config",
        "lmforge",
        "lmforge.models",
        "lmforge.models",
        "lmforge.train",
        "lmforge.inference",
    ]
    # the real tree: a part's imports are found, the public API's exports among them
    graph = edges()
    assert ("lmforge.hf", "lmforge.models") in graph and ("lmforge", "lmforge.train") in graph


def test_cycles_are_found():
    graph = {
        pair: []
        for pair in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d"), ("x", "a")]
    }
    assert cycles(graph) == [["d", "e"], ["a", "b", "c"]]
    assert shortest_path(graph, "b", "a") == ["b", "c", "a"]
    assert cycles({("a", "b"): [], ("b", "c"): [], ("a", "c"): []}) == []


def test_model_code_and_hf_import_nothing_above_them():
    graph = edges()
    wrong = [
        str(imp)
        for (source, target), imports in sorted(graph.items())
        if target in FORBIDDEN.get(source, ())
        for imp in imports
    ]
    rules = "; ".join(f"{s} imports nothing of {', '.join(t)}" for s, t in FORBIDDEN.items())
    assert not wrong, f"layering broken ({rules}):\n  " + "\n  ".join(wrong)


def shortest_path(graph: dict[tuple[str, str], list[Import]], start: str, goal: str) -> list[str]:
    """The parts on a shortest import chain from start to goal (breadth first), both ends included."""
    came_from: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue and goal not in came_from:
        a = queue.popleft()
        for x, b in sorted(graph):
            if x == a and b not in came_from:
                came_from[b] = a
                queue.append(b)
    path = [goal]
    while came_from[path[-1]] is not None:
        path.append(came_from[path[-1]])
    return path[::-1]


def test_no_import_cycles():
    graph = edges()
    report = []
    for component in cycles(graph):
        inside = {pair: imports for pair, imports in sorted(graph.items()) if set(pair) <= set(component)}
        loops = {}
        for a, b in inside:  # each import inside a component lies on a cycle: b leads back to a
            loop = [a, *shortest_path(inside, b, a)]
            first = loop.index(min(loop[:-1]))
            loops.setdefault(tuple(loop[first:-1] + loop[:first]), None)
        report.append(f"import cycle among {', '.join(component)}, e.g.:")
        report += [f"    {' -> '.join([*loop, loop[0]])}" for loop in loops]
        report.append("  the imports between those parts (cut some to break the cycles):")
        report += [
            f"    {a} -> {b}: " + "; ".join(str(i) for i in imports) for (a, b), imports in inside.items()
        ]
    assert not report, "\n".join(report)


def test_forwards_by_name_are_still_there():
    by_name = {(imp.file, part_of(imp.target)) for imp in lmforge_imports() if imp.how == "by name"}
    stale = sorted(set(FORWARDS) - by_name)
    assert not stale, f"FORWARDS lists by-name imports the code no longer has: {stale}"
