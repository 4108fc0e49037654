"""Size is a budget (STYLE.md): no function or method in lmforge/ is longer than 50 lines, docstring
included, so each reads on one screen."""

import ast
from pathlib import Path

LIMIT = 50
ROOT = Path(__file__).resolve().parents[1] / "lmforge"


def long_functions(root: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_50_lines():
    assert long_functions(ROOT, LIMIT) == []


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "m.py").write_text(f"def short():\n    pass\n\n\nclass A:\n    def long(self):\n{body}\n")
    assert long_functions(tmp_path, LIMIT) == [f"{tmp_path.name}/m.py:6 long ({LIMIT + 1} lines)"]
