"""bench/profile.py files each aten op's time under the right part (matmuls, attention, the rest) and
writes its section. Times are never asserted: only where they are counted and how they add up.
"""

import torch
import torch.nn.functional as F

from bench import profile


def test_time_is_filed_under_matmuls_attention_or_the_rest():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    q = torch.randn(1, 2, 16, 8)
    sides = {
        "matmul": lambda: a @ b,
        "attention": lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True),
        "elementwise": lambda: (a + b).tanh(),
    }
    measured = profile.measure(sides, warmup=1, rounds=1, calls=2)
    rows = {name: profile.summarize(m, units=1) for name, m in measured.items()}

    assert rows["matmul"]["top"][0]["op"] in profile.MATMUL_OPS
    assert rows["matmul"]["matmul_ms"] > 0 and rows["matmul"]["attention_ms"] == 0
    assert rows["attention"]["attention_ms"] > 0 and rows["attention"]["matmul_ms"] == 0
    assert rows["elementwise"]["matmul_ms"] == rows["elementwise"]["attention_ms"] == 0
    assert {"aten::add", "aten::tanh"} <= {op["op"] for op in rows["elementwise"]["top"]}
    for row in rows.values():
        assert row["aten_ms"] > 0 and row["aten_calls"] >= 1
        assert row["outside_aten_max_ms"] > 0  # Python runs the ops: a profiled wall exceeds their time
        parts = row["matmul_ms"] + row["attention_ms"] + row["other_aten_ms"]
        assert abs(parts - row["aten_ms"]) < 1e-9
        assert all(op["op"].startswith("aten::") and op["share"] >= 0 for op in row["top"])


def test_units_divide_every_time_but_not_the_shares():
    measured = profile.measure(
        {"side": lambda: torch.randn(32, 32) @ torch.randn(32, 32)}, warmup=0, rounds=1, calls=1
    )
    one, eight = profile.summarize(measured["side"], 1), profile.summarize(measured["side"], 8)
    for key in ("ms", "aten_ms", "matmul_ms", "outside_aten_ms", "outside_aten_max_ms", "aten_calls"):
        assert abs(one[key] / 8 - eight[key]) < 1e-12
    assert [op["share"] for op in one["top"]] == [op["share"] for op in eight["top"]]


def test_the_section_lists_both_sides_of_both_comparisons():
    def side(ms: float) -> dict:
        top = [
            {"op": "aten::mm", "ms": ms / 2, "share": 0.5},
            {"op": "aten::gelu", "ms": ms / 4, "share": 0.25},
        ]
        parts = {"matmul_ms": ms / 2, "attention_ms": 0.0, "other_aten_ms": ms / 4, "outside_aten_ms": ms / 4}
        parts["outside_aten_max_ms"] = ms / 2
        return {"ms": ms, "aten_ms": 3 * ms / 4, "aten_calls": 100.0, "top": top, **parts}

    results = {
        "threads": 2,
        "rounds": 5,
        "train": {
            "label": "training step, tiny",
            "unit": "step",
            "lmforge": side(60),
            "transformers": side(70),
        },
        "decode": {
            "label": "greedy decode, demo",
            "unit": "token",
            "lmforge": side(2),
            "transformers": side(3),
        },
    }
    text = profile.markdown(results)
    assert text.startswith("## Where the time goes")
    assert "### Training step, tiny" in text and "### Greedy decode, demo" in text
    assert "ms per step" in text and "ms per token" in text
    assert text.count("| lmforge |") == 2 and text.count("| transformers |") == 2
    assert "| 1 | `aten::mm` | 30.00 | 50% | `aten::mm` | 35.00 | 50% |" in text
    assert "30.00 (50%)" in text  # lmforge's matmuls in the training step
    assert "15.00-30.00 (25-50%)" in text  # and the time outside aten


def test_self_times_from_raw_events_agree_with_key_averages():
    """The raw-event sweep (fast for a decode's ~80,000 ops) counts self time as torch's own event tree does."""
    layer = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
    x = torch.randn(16, 32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        layer(x).square().sum().backward()
    ours = profile.self_times(prof.profiler.kineto_results.events())
    theirs = {e.key: e.self_cpu_time_total for e in prof.key_averages()}  # microseconds
    assert set(theirs) <= set(ours)
    for op, self_us in theirs.items():
        assert abs(ours[op][0] / 1e3 - self_us) < 1e-3, op
