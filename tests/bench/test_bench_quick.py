"""The benchmark machinery runs end to end in its tiny smoke mode and writes well-formed results.

Speed itself is never asserted: only that every comparison produced positive, finite ratios, into the
directory given and not over the repository's BENCHMARKS.md.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ratios(node, path=""):
    """(path, value) of every entry of every "ratio" dict in the results."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ratio":
                yield from ((f"{path}.ratio.{m}", v) for m, v in value.items())
            else:
                yield from _ratios(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _ratios(value, f"{path}[{i}]")


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.slow
def test_smoke_run_writes_well_formed_results(tmp_path):
    repo_report = ROOT / "BENCHMARKS.md"
    before = repo_report.read_bytes() if repo_report.exists() else None
    proc = _run("bench", "--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (repo_report.read_bytes() if repo_report.exists() else None) == before

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "smoke"
    assert {"cpu", "cores", "torch_threads", "torch", "transformers", "native_bf16", "date"} <= set(
        results["machine"]
    )
    assert {r["dtype"] for r in results["ceilings"]} == {"float32", "bfloat16"}
    assert all(r["gflops"] > 0 for r in results["ceilings"])
    assert (
        results["memory_read"]["gbps"] > 0 and "Streaming reads" in (tmp_path / "BENCHMARKS.md").read_text()
    )
    measured = {
        section: [r for r in results[section] if "skipped" not in r]
        for section in ("train", "generate", "data")
    }
    # float32 and bf16 on every CPU: the smoke run does not depend on the machine's bf16 support
    assert [(r["shape"], r["precision"]) for r in measured["train"]] == [
        ("tiny", "float32"),
        ("tiny", "bfloat16"),
    ]
    assert {(r["precision"], r["batch_size"]) for r in measured["generate"]} == {
        (p, b) for p in ("float32", "bfloat16") for b in (1, 2)
    }
    assert {r["batch_size"] for r in measured["generate"]} == {1, 2}
    assert len(measured["data"]) == 1
    for row in measured["train"]:
        assert row["params"] > 0 and row["lmforge"]["mfu"] > 0 and row["transformers"]["mfu"] > 0
        assert set(row["ratio"]) == {"tokens_per_s"}  # smoke mode measures no memory
    for row in measured["generate"]:
        # Both sides generate exactly new_tokens per row: EOS is ignored on both.
        expected = row["batch_size"] * row["new_tokens"]
        assert row["generated_tokens"] == {"lmforge": expected, "transformers": expected}
        assert set(row["ratio"]) == {"decode_tokens_per_s", "ttft_ms", "tokens_per_s"}
    assert not [r for s in ("train", "generate") for r in results[s] if "skipped" in r]
    ratios = list(_ratios(results))
    assert len(ratios) >= 6
    for where, value in ratios:
        assert isinstance(value, float) and math.isfinite(value) and value > 0, where

    report = (tmp_path / "BENCHMARKS.md").read_text()
    for heading in ("## Matmul ceilings", "## Training", "## Generation", "## Data preparation"):
        assert heading in report
    assert "Smoke run" in report and results["machine"]["cpu"] in report
    assert "## Where the time goes" in report
    profiled = [
        results["profile"][k][side] for k in ("train", "decode") for side in ("lmforge", "transformers")
    ]
    assert all(row["aten_ms"] > 0 and row["top"] for row in profiled)


@pytest.mark.slow
def test_peak_memory_subprocess_sees_the_model():
    """A 2-step tiny training run raises the peak RSS by a positive, plausible amount (imports excluded),
    even when launched from a large process: a child's ru_maxrss starts at its parent's RSS."""
    import torch

    ballast = torch.ones(100_000_000)  # 400 MB in this process, as in the benchmark's own process
    case = {"shape": "tiny", "batch_size": 2, "seq_len": 32, "precision": "float32"}
    proc = _run("bench.memory", json.dumps({"side": "lmforge", "case": case, "steps": 2}))
    del ballast
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    assert 1 < peak < 200  # a 0.25M-parameter model: far less than the ~200 MiB torch's import takes
