"""README.zh.md stays in step with README.md: the same code blocks (comments aside, which may be translated),
so the same `lmforge` and `make` commands; the same headings; the same figures in the prose; and each
links to the other. A ```text block (the layout diagram) is prose and may be translated too."""

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
CODE = ("sh", "python")  # the blocks whose comments may be translated


def _read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def strip_comments(code: str) -> str:
    """`code` (shell or Python) without its `#` comments and trailing spaces; a `#` inside quotes stays.
    A quote may span lines (a multi-line --prompt), so the scan runs over the whole block."""
    out, quote, i = [], None, 0
    while i < len(code):
        c = code[i]
        if quote:
            quote = None if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c == "#" and (i == 0 or code[i - 1] in " \t\n"):
            while i < len(code) and code[i] != "\n":  # a comment runs to the end of its line
                i += 1
            continue
        out.append(c)
        i += 1
    return "\n".join(line.rstrip() for line in "".join(out).splitlines() if line.strip())


def _comparable(lang: str, code: str) -> str:
    if lang == "text":  # a diagram in words: translated
        return ""
    if lang in CODE:
        return strip_comments(code)
    return "\n".join(line.rstrip() for line in code.splitlines())  # program output: verbatim


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, what must match) of each fenced block: code without comments, output verbatim."""
    return [(lang, _comparable(lang, code)) for lang, code in FENCE.findall(text)]


def prose(text: str) -> str:
    """The text outside code blocks, plus the comments inside them and the `text` blocks (translated words)."""
    comments = [code for lang, code in FENCE.findall(text) if lang == "text"]
    for lang, code in FENCE.findall(text):
        if lang in CODE:
            kept = set(strip_comments(code).splitlines())
            comments += [line for line in code.splitlines() if line.rstrip() not in kept]
    return FENCE.sub("", text) + "\n".join(comments)


def commands(text: str) -> set[str]:
    """The `lmforge <verb>` and `make <target>` commands in code blocks."""
    code = "\n".join(c for _, c in blocks(text))
    return set(re.findall(r"\b(?:lmforge|-m lmforge) ([a-z][a-z-]*)", code)) | set(
        "make " + t for t in re.findall(r"(?:^|\s)make ([a-z][a-z0-9-]*)", code, re.MULTILINE)
    )


def headings(text: str) -> list[int]:
    """The level of each Markdown heading outside code blocks."""
    return [len(m) for m in re.findall(r"^(#+) ", FENCE.sub("", text), re.MULTILINE)]


def figures(text: str) -> set[str]:
    """Every number written in digits (4.25, 1,628, 3.61x's 3.61, 2026-11-30's parts) in the prose."""
    return set(re.findall(r"\d+(?:[.,]\d+)*", prose(text)))


@pytest.fixture(scope="module")
def both() -> tuple[str, str]:
    return _read("README.md"), _read("README.zh.md")


def test_the_code_blocks_are_the_same_but_for_comments(both):
    en, zh = (blocks(t) for t in both)
    assert len(en) == len(zh), f"README.md has {len(en)} code blocks, README.zh.md {len(zh)}"
    for i, (a, b) in enumerate(zip(en, zh)):
        assert a == b, f"code block {i + 1} differs:\n--- README.md\n{a[1]}\n--- README.zh.md\n{b[1]}"


def test_the_same_commands(both):
    en, zh = (commands(t) for t in both)
    assert {"make demo", "make chat", "pretrain", "generate"} <= en
    assert en == zh, f"only in README.md: {sorted(en - zh)}; only in README.zh.md: {sorted(zh - en)}"


def test_the_same_headings(both):
    en, zh = (headings(t) for t in both)
    assert len(en) >= 5 and en == zh


def test_the_same_figures(both):
    """A figure changed in one README (a measured time, a loss) must be changed in the other."""
    en, zh = (figures(t) for t in both)
    assert {"3.61", "1,628"} <= en
    assert en == zh, f"only in README.md: {sorted(en - zh)}; only in README.zh.md: {sorted(zh - en)}"


def test_each_links_to_the_other(both):
    en, zh = both
    assert "中文说明: [README.zh.md](README.zh.md)" in "\n".join(en.splitlines()[:5])
    assert "[English: README.md](README.md)" in "\n".join(zh.splitlines()[:5])


def test_the_checks_see_a_difference():
    """The comparisons fail on what they guard: a changed command, a comment is not a change, a figure."""
    a = "# T\n\n```sh\nlmforge generate --top-k 40   # forty\n```\n4.25\n"
    b = a.replace("# forty", "# 四十")
    assert blocks(a) == blocks(b) and figures(a) == figures(b)
    assert blocks(a) != blocks(a.replace("40", "50"))
    assert commands(a) == {"generate"} and commands(a.replace("generate", "chat")) == {"chat"}
    assert figures(a) != figures(a.replace("4.25", "4.26"))
    assert strip_comments("x = '#not' # yes\ny = 1") == "x = '#not'\ny = 1"
    assert Counter(headings("# a\n```sh\n# not a heading\n```\n## b\n")) == Counter([1, 2])
