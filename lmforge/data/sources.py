"""Where text comes from: files and directories given by the user, or the built-in corpus.

The built-in corpus is the Python standard library source of the running interpreter: real text
that every machine with Python has, so pretraining works with no download.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from lmforge.errors import LmforgeError


def expand_paths(paths: list[str | Path], glob: str = "*.txt") -> list[Path]:
    """Files named directly, plus files under each directory matching `glob` (recursively), sorted."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            matches = sorted(f for f in p.rglob(glob) if f.is_file())
            if not matches:
                raise LmforgeError(
                    f"directory {p} has no files matching {glob!r}; pass --glob to choose others"
                )
            files.extend(matches)
        elif p.is_file():
            files.append(p)
        else:
            raise LmforgeError(f"no such file or directory: {p}")
    return files


def builtin_corpus_files() -> list[Path]:
    """`*.py` under the interpreter's standard library: test suites, third-party packages and generated
    files (the `encodings` charmap tables, the `pydoc_data` documentation dump) excluded."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {
        "test",
        "tests",
        "idle_test",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "encodings",
        "pydoc_data",
    }
    files = [
        f
        for f in sorted(stdlib.rglob("*.py"))
        if not skip.intersection(f.relative_to(stdlib).parts[:-1]) and not f.name.startswith("test_")
    ]
    if not files:
        raise LmforgeError(f"found no Python sources under {stdlib}; pass --data to use your own text")
    return files
