"""The metrics log: exact floats, flushed rows, resume truncation, tolerant reads, TensorBoard."""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from lmforge.errors import LmforgeError
from lmforge.train.metrics import MetricsLog, read_metrics


def _rows(n, eval_every=3):
    rows = []
    for step in range(1, n + 1):
        row = {"step": step, "loss": 10.0 / step + 1 / 3, "lr": 3e-4 * step / n, "grad_norm": 0.1 + step / 7}
        if step % eval_every == 0:
            row.update(val_loss=2.0 + 1 / step, val_ppl=math.exp(2.0 + 1 / step))
        rows.append(row)
    return rows


def _write(path, rows, **kwargs):
    with MetricsLog(path, **kwargs) as log:
        for row in rows:
            log.log(row)


def test_rows_round_trip_with_exact_floats(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [*_rows(10), {"step": 11, "loss": 0.1 + 0.2, "tiny": 5e-324, "big": 1.7976931348623157e308}]
    _write(path, rows)
    assert read_metrics(path) == rows  # == on floats: bit-identical, not approximately equal


def test_nan_loss_is_logged_not_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": 1, "loss": float("nan")}, {"step": 2, "loss": float("inf")}])
    rows = read_metrics(path)
    assert math.isnan(rows[0]["loss"]) and rows[1]["loss"] == math.inf


def test_numpy_scalars_are_written_as_numbers(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"step": np.int64(4), "loss": np.float32(0.5), "lr": np.float64(1e-3)}])
    assert read_metrics(path) == [{"step": 4, "loss": 0.5, "lr": 1e-3}]


def test_each_row_is_visible_before_close(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for row in _rows(5):
        log.log(row)
        assert read_metrics(path)[-1] == row
    log.close()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_writer_keeps_every_logged_row(tmp_path):
    path = tmp_path / "metrics.jsonl"
    script = (
        "import os, signal\n"
        "from lmforge.train.metrics import MetricsLog\n"
        f"log = MetricsLog({str(path)!r})\n"
        "for step in range(1, 51):\n"
        "    log.log({'step': step, 'loss': 1.0 / step})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert [r["step"] for r in read_metrics(path)] == list(range(1, 51))


def test_fresh_run_truncates_an_old_log(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, _rows(8))
    _write(path, _rows(2))
    assert read_metrics(path) == _rows(2)


def test_resume_drops_rows_after_the_checkpoint_and_keeps_earlier_bytes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, _rows(10))
    original = path.read_bytes().splitlines(keepends=True)
    log = MetricsLog(path, resume_from_step=6)
    assert path.read_bytes() == b"".join(original[:6])  # steps 1..6, byte for byte
    for row in _rows(10)[6:]:  # the resumed run replays steps 7..10
        log.log(row)
    log.close()
    assert read_metrics(path) == _rows(10)  # no step appears twice
    assert os.listdir(tmp_path) == ["metrics.jsonl"]  # the atomic rewrite left no temp file


def test_resume_drops_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, _rows(4))
    with open(path, "ab") as f:
        f.write(b'{"step": 5, "loss": 1.2')  # killed mid-line, no newline
    _write(path, [{"step": 5, "loss": 1.25}], resume_from_step=4)
    assert read_metrics(path) == [*_rows(4), {"step": 5, "loss": 1.25}]


def test_resume_without_a_log_starts_one(tmp_path):
    path = tmp_path / "out" / "metrics.jsonl"
    _write(path, _rows(2), resume_from_step=100)
    assert read_metrics(path) == _rows(2)


def test_read_skips_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, _rows(3))
    complete = path.read_bytes()
    for cut in (b'{"step": 4, "lo', b'{"step": 4, "loss": 1.5'):  # invalid JSON, and valid but unfinished
        path.write_bytes(complete + cut)
        assert read_metrics(path) == _rows(3)


def test_read_rejects_a_corrupt_line_in_the_middle(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in _rows(3)]
    path.write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    with pytest.raises(LmforgeError, match="line 2"):
        read_metrics(path)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_without_the_package_names_the_fix(tmp_path):
    with pytest.raises(LmforgeError, match="pip install tensorboard"):
        MetricsLog(tmp_path / "metrics.jsonl", tensorboard_dir=str(tmp_path / "tb"))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs tensorboard")
def test_tensorboard_gets_numeric_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    _write(tmp_path / "metrics.jsonl", [{**r, "note": "text"} for r in _rows(6)], tensorboard_dir=str(tb))
    events = EventAccumulator(str(tb))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "lr", "grad_norm", "val_loss", "val_ppl"}
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 7))
