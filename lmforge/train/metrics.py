"""The training metrics log: one JSON object per optimizer step in OUT/metrics.jsonl (JSON Lines).

Each row has at least "step" and "loss"; the loop adds "lr", "grad_norm", "tokens_per_s" (real input
tokens, padding excluded, for every task), "elapsed_s", and evaluation steps add "val_loss" and, where
the loss is per token (not for classification or QA), "val_ppl". Every row is flushed as it is
written, so a killed run loses at most the line it was writing, and `read_metrics` skips such a
truncated last line. Floats are written with Python's shortest round-trip repr, so they read back
bit-identical; a NaN or infinite loss is written as `NaN`/`Infinity` (Python's JSON extension),
because a diverged run is exactly when the log must still say what happened.

On resume from a checkpoint at step k, rows after k are dropped: the killed run may have logged
them before dying, and the resumed run logs those steps again.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

from lmforge.errors import LmforgeError


class MetricsLog:
    """Append-only JSONL metrics file, optionally mirrored to TensorBoard scalars."""

    def __init__(self, path, *, resume_from_step: int | None = None, tensorboard_dir: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from_step is not None:
            _truncate_after(self.path, resume_from_step)
        # A fresh run starts a fresh log; a resumed one appends. The file stays open for the whole
        # run, so no `with` block: close() (or leaving a `with MetricsLog(...)`) closes it.
        self._file = open(self.path, "wb" if resume_from_step is None else "ab")  # noqa: SIM115
        self._writer = None
        if tensorboard_dir is not None:
            self._writer = _summary_writer(tensorboard_dir, resume_from_step)

    def log(self, row: dict) -> None:
        """Append one row as a JSON line and flush it to the OS."""
        line = json.dumps(row, default=_to_builtin) + "\n"
        self._file.write(line.encode("utf-8"))
        self._file.flush()
        if self._writer is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and _is_number(value):
                    self._writer.add_scalar(key, float(value), step)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(path) -> list[dict]:
    """All complete rows of a metrics file; a truncated last line (a killed writer) is skipped."""
    return [row for _, row in _complete_lines(Path(path).read_bytes(), path)]


def _complete_lines(data: bytes, path) -> list[tuple[bytes, dict]]:
    """(raw line including its newline, parsed row) for every complete line."""
    lines = data.splitlines(keepends=True)
    out = []
    for i, raw in enumerate(lines):
        is_last = i == len(lines) - 1
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            if is_last:
                break  # the writer was killed mid-line
            raise LmforgeError(
                f"{path}: line {i + 1} is not valid JSON; the metrics file is corrupt"
            ) from None
        if is_last and not raw.endswith(b"\n"):
            # NOTE: a line cut exactly after a digit still parses ("1.2" of "1.25"); without its
            # newline it was never finished, so it is not trusted.
            break
        out.append((raw, row))
    return out


def _truncate_after(path: Path, step: int) -> None:
    """Atomically rewrite `path` keeping only rows with step <= `step`, each byte-identical."""
    if not path.exists():
        path.write_bytes(b"")
        return
    kept = [raw for raw, row in _complete_lines(path.read_bytes(), path) if row.get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _summary_writer(log_dir: str, resume_from_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise LmforgeError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    # purge_step hides events after the checkpoint, for the same reason the JSONL is truncated.
    purge = None if resume_from_step is None else resume_from_step + 1
    return SummaryWriter(log_dir=log_dir, purge_step=purge)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # NumPy scalars included


def _to_builtin(value):
    """json.dumps fallback: NumPy and torch scalars become Python numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"metrics value of type {type(value).__name__} is not JSON serialisable")
