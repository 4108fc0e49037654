"""bench/gguf.py's compiled mode never passes eager decoding off as compiled, and its section names the
fastest lmforge mode. Speed is never asserted: a tiny random Llama decodes, and the section renders
from a results row.
"""

import pytest

from bench import gguf, report
from lmforge.inference import static_cache
from lmforge.models import build_model, get_preset


@pytest.fixture
def tiny_llama():
    model = build_model(get_preset("llama-tiny")).eval()
    model.fuse_projections()
    return model


def test_a_compiled_side_notes_the_fallback_to_eager(tiny_llama, monkeypatch):
    # A backend torch.compile does not know fails the way a missing C++ compiler does: lmforge decodes
    # eagerly, with its warning.
    monkeypatch.setattr(static_cache, "COMPILE_BACKEND", "no_such_backend")
    monkeypatch.setattr(static_cache, "_COMPILED", {})
    side = gguf.DecodeSide(tiny_llama, [1, 2, 3], 4, use_compile=True)
    assert side.first_call_s is not None  # called once at construction
    assert len(side.failures) == 1 and gguf.COMPILE_FAILED in side.failures[0]
    assert side()["decode_tokens_per_s"] > 0
    assert len(side.failures) == 2  # every call is watched, not only the first

    eager = gguf.DecodeSide(tiny_llama, [1, 2, 3], 4, use_compile=False)
    assert eager.first_call_s is None and eager()["decode_tokens_per_s"] > 0 and eager.failures == []


def _row(compiled: dict, fastest: str) -> dict:
    rates = {"lmforge": 20.0, "lmforge int8": 50.0, "lmforge int4": 60.0, "transformers": 25.0}
    row = {"file": "x.gguf", "megabytes": 98.0, "prompt_tokens": 43, "new_tokens": 64, "runs": 3}
    row |= {side: {"decode_tokens_per_s": rate} for side, rate in rates.items()}
    row["lmforge"]["load_s"] = row["transformers"]["load_s"] = 1.0
    row["lmforge int4, compiled"] = compiled
    row["ratio"] = {"load_s": 1.0, "decode_tokens_per_s": 0.8, "int8 decode_tokens_per_s": 2.0}
    row["ratio"] |= {"int4 decode_tokens_per_s": 2.4, "int4, compiled decode_tokens_per_s": 3.2}
    row["llama_cpp"], row["fastest"] = "llama-cpp-python is not installed", fastest
    return row


def test_the_section_says_when_compilation_failed_and_names_the_fastest_mode():
    failed = {"first_call_s": 1.0, "compile_failed": "torch.compile of the decode step failed (no compiler)"}
    text = report._gguf(_row(failed, "lmforge int4"))
    compiled_line = next(line for line in text.splitlines() if "(lmforge int4, compiled)" in line)
    assert "not measured: torch.compile of the decode step failed (no compiler)" in compiled_line
    assert "3.20" not in text  # no ratio for the mode that did not run compiled
    assert "fastest mode here: **int4**," in text and "decoded eagerly" in text
    assert "**decode tok/s (lmforge int4)**, the fastest" in text

    compiled = {"first_call_s": 40.0, "decode_tokens_per_s": 80.0, "call_s": 0.8}
    text = report._gguf(_row(compiled, "lmforge int4, compiled"))
    assert "fastest mode here: **int4, compiled**, **3.20**x transformers float32" in text
    assert "first call took 40.0 s, a later one 0.80 s" in text
