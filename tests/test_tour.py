"""The guided tour (docs/tour.md and docs/tour.zh.md) cannot rot.

Every relative link resolves to a file; a line anchor (`#L60` or `#L60-L95`) names lines the file has,
and when the link's text is a code identifier (`reference_attention`, `Attention.forward`) its last
part occurs in those lines, so a function that moves is caught. Every cited test
(`tests/x.py::test_name`) exists; every picture is a PNG within its size budget; each section has
its formula, code, test and command; and the two languages have the same sections, links, commands
and outputs (outputs are pasted from a run, never translated). Nothing here runs a model.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TOURS = {"en": DOCS / "tour.md", "zh": DOCS / "tour.zh.md"}

# The seed articles' concepts, in their order: a word of each English section title.
CONCEPTS = [
    "token",
    "position",
    "attention",
    "feed-forward",
    "encoder",
    "objective",
    "pretraining",
    "fine-tuning",
    "evaluation",
    "generation",
    "feature",
    "dialogue",
    "compute",
]
PICTURE_BUDGET = 150 * 1024  # bytes: the pictures live in the repository
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
LINE_ANCHOR = re.compile(r"L(\d+)(?:-L(\d+))?")
IDENTIFIER = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
TEST_ID = re.compile(r"(tests/[\w/]+\.py)::((?:\w+::)?\w+)")


@dataclass
class Link:
    text: str
    target: str
    is_image: bool

    @property
    def path(self) -> str:
        return self.target.split("#", 1)[0]

    @property
    def anchor(self) -> str | None:
        return self.target.split("#", 1)[1] if "#" in self.target else None

    @property
    def is_relative(self) -> bool:
        return "://" not in self.target and not self.target.startswith(("#", "mailto:"))


@dataclass
class Section:
    title: str
    links: list[Link] = field(default_factory=list)
    fences: list[tuple[str, str]] = field(default_factory=list)  # (language, body)
    n_formulas: int = 0


@cache
def read_tour(language: str) -> tuple[list[Link], list[Section]]:
    """Every link of a tour, and its `## ` sections (the text before the first one is the introduction)."""
    text = TOURS[language].read_text(encoding="utf-8")
    links, sections = [], []
    for chunk in re.split(r"^(?=## )", text, flags=re.M):
        fences = [(m.group(1), m.group(2)) for m in FENCE.finditer(chunk)]
        prose = FENCE.sub("", chunk)  # a link or a dollar sign inside a command is not the tour's
        chunk_links = [
            Link(m.group(2).strip("` "), m.group(3), m.group(1) == "!") for m in LINK.finditer(prose)
        ]
        links += chunk_links
        if chunk.startswith("## "):
            title = chunk.splitlines()[0][3:].strip()
            sections.append(Section(title, chunk_links, fences, prose.count("$$") // 2))
    return links, sections


def resolve(link: Link) -> Path:
    return (DOCS / link.path).resolve()


def relative_links(language: str) -> list[Link]:
    return [link for link in read_tour(language)[0] if link.is_relative and link.path]


def describe(link: Link) -> str:
    return f"[{link.text}]({link.target})"


@pytest.mark.parametrize("language", TOURS)
def test_every_relative_link_resolves_to_a_file_in_the_repository(language):
    for link in relative_links(language):
        path = resolve(link)
        assert path.is_relative_to(ROOT), f"{describe(link)} leaves the repository"
        assert path.exists(), f"{describe(link)}: {path.relative_to(ROOT)} does not exist"


@pytest.mark.parametrize("language", TOURS)
def test_line_anchors_name_existing_lines_that_hold_the_named_code(language):
    for link in relative_links(language):
        if link.anchor is None or link.path.endswith(".md"):
            continue  # a Markdown file's anchors are its headings
        match = LINE_ANCHOR.fullmatch(link.anchor)
        assert match, f"{describe(link)}: a code anchor is #L<first> or #L<first>-L<last>"
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        lines = resolve(link).read_text(encoding="utf-8").splitlines()
        assert 1 <= first <= last <= len(lines), (
            f"{describe(link)}: lines {first}-{last} outside the file's {len(lines)} lines"
        )
        if IDENTIFIER.fullmatch(link.text):
            name = link.text.rsplit(".", 1)[-1]
            shown = "\n".join(lines[first - 1 : last])
            assert re.search(rf"\b{re.escape(name)}\b", shown), (
                f"{describe(link)}: {name!r} is not in lines {first}-{last}; the code moved, "
                "point the anchor at its new lines"
            )


def heading_anchor(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("language", TOURS)
def test_links_within_the_page_name_its_headings(language):
    text = TOURS[language].read_text(encoding="utf-8")
    anchors = {heading_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", FENCE.sub("", text), re.M)}
    for link in read_tour(language)[0]:
        if link.target.startswith("#"):
            assert link.target[1:] in anchors, f"{describe(link)}: no heading has that anchor"


def defined_tests(path: Path) -> set[str]:
    """The test functions of a file: `test_x`, and `Class::test_x` for methods."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return names


@pytest.mark.parametrize("language", TOURS)
def test_every_cited_test_exists_where_its_link_points(language):
    cited = [link for link in relative_links(language) if "::" in link.text]
    assert cited, "the tour cites no test"
    for link in cited:
        match = TEST_ID.fullmatch(link.text)
        assert match, f"{describe(link)}: a test is cited as tests/<file>.py::<test name>"
        test_file, name = match.groups()
        assert resolve(link) == ROOT / test_file, f"{describe(link)}: the link goes to another file"
        assert name in defined_tests(ROOT / test_file), f"{describe(link)}: {test_file} has no {name}"


@pytest.mark.parametrize("language", TOURS)
def test_every_picture_is_a_png_within_budget(language):
    pictures = [link for link in read_tour(language)[0] if link.is_image]
    assert pictures, "the tour shows no picture"
    for link in pictures:
        path = resolve(link)
        assert path.is_file(), f"{describe(link)}: no such picture"
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{describe(link)} is not a PNG"
        size = path.stat().st_size
        assert size <= PICTURE_BUDGET, f"{describe(link)} is {size:,} bytes, over {PICTURE_BUDGET:,}"


def test_the_sections_are_the_seed_concepts_in_order():
    titles = [s.title.lower() for s in read_tour("en")[1]]
    assert len(titles) == len(CONCEPTS), f"{len(titles)} sections for {len(CONCEPTS)} concepts: {titles}"
    for title, concept in zip(titles, CONCEPTS):
        assert concept in title, f"section {title!r} is where {concept!r} belongs"


@pytest.mark.parametrize("language", TOURS)
def test_each_section_has_its_formula_code_test_and_command_with_output(language):
    for s in read_tour(language)[1]:
        code = [link for link in s.links if link.path.startswith(("../lmforge/", "../bench/"))]
        assert s.n_formulas, f"{s.title}: no $$ formula"
        assert any(link.anchor for link in code), f"{s.title}: no link to lines of lmforge's code"
        assert any("::" in link.text for link in s.links), f"{s.title}: no test cited"
        languages = [lang for lang, _ in s.fences]
        assert "sh" in languages, f"{s.title}: no command (a ```sh block)"
        assert languages.index("sh") + 1 < len(languages) and "text" in languages[languages.index("sh") :], (
            f"{s.title}: the command's output (a ```text block after it) is missing"
        )


@pytest.mark.parametrize("language", TOURS)
def test_each_inline_formula_closes_on_its_line(language):
    # GitHub renders $...$ only within one line; a formula broken across lines shows as raw LaTeX.
    prose = FENCE.sub("", TOURS[language].read_text(encoding="utf-8"))
    for line in prose.splitlines():
        if not line.startswith("$$"):
            assert line.count("$") % 2 == 0, f"an inline formula opens and does not close: {line!r}"


def test_both_languages_have_the_same_sections_links_commands_and_outputs():
    english, chinese = read_tour("en")[1], read_tour("zh")[1]
    assert len(english) == len(chinese), f"{len(english)} English sections, {len(chinese)} Chinese"
    for n, (en, zh) in enumerate(zip(english, chinese), start=1):
        assert [link.target for link in en.links] == [link.target for link in zh.links], (
            f"section {n} ({en.title}): the links differ between the languages"
        )
        assert en.fences == zh.fences, f"section {n} ({en.title}): the commands or their outputs differ"
        assert en.n_formulas == zh.n_formulas, f"section {n} ({en.title}): the number of formulas differs"
