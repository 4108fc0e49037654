"""Pictures of metrics, drawn with matplotlib and written as PNG files: the loss curve a training run ends
with (OUT/loss.png) and the confusion matrix of a classifier (`lmforge evaluate`, `lmforge finetune`).

`drawing` is the canvas every lmforge picture is drawn on (lmforge/inference/inspect.py's too): a figure
of an exact pixel size on matplotlib's Agg backend, which renders to memory and never opens a window, so
pictures are drawn the same on a server without a display; the file is replaced atomically.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lmforge.errors import LmforgeError

DPI = 100  # pixels per inch: a figure of W x H pixels is W/DPI x H/DPI inches
TRAIN_COLOUR, VAL_COLOUR = "tab:blue", "tab:orange"
# Tried after DejaVu Sans for the characters it lacks (the labels of a Chinese text), where installed.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "SimHei")


@contextlib.contextmanager
def drawing(path, width: int, height: int) -> Iterator[Figure]:
    """A figure of width x height pixels to draw on; on leaving the block it is written as a PNG at
    path (a temporary file, then os.replace: a reader never sees half a picture)."""
    installed = {font.name for font in matplotlib.font_manager.fontManager.ttflist}
    fonts = ["DejaVu Sans", *(name for name in CJK_FONTS if name in installed)]
    with matplotlib.rc_context({"font.family": fonts, "font.size": 10}):
        fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)  # NOTE: the Agg canvas, explicitly: no GUI backend, whatever matplotlibrc says
        yield fig
        _write_png(fig, Path(path))


def _write_png(fig: Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    except OSError as e:
        raise LmforgeError(
            f"cannot write {path} ({e.strerror or e}); pass a path in a writable directory"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    if any("missing from font" in str(w.message) for w in caught):
        print(
            f"lmforge: {path} shows some characters as boxes: no installed font has them "
            "(install a CJK font such as fonts-noto-cjk for Chinese labels)",
            file=sys.stderr,
        )


# ---- the loss curve ---------------------------------------------------------------------------------------


def write_loss_png(
    rows: list[dict], path, *, width: int = 800, height: int = 500, title: str = "loss"
) -> None:
    """Plot "loss" (a faint line and its smoothed curve) and "val_loss" (markers) against "step" from
    metrics rows, as a PNG of width x height pixels at path.

    Rows whose values are missing, NaN or infinite are skipped; the y axis is logarithmic when the
    losses span more than a factor of 10 (the fast early fall and the slow late one both show).
    """
    if width < 240 or height < 160:
        raise ValueError(f"a loss plot needs at least 240x160 pixels, got {width}x{height}")
    train_x, train_y = _series(rows, "loss")
    val_x, val_y = _series(rows, "val_loss")
    with drawing(path, width, height) as fig:
        ax = fig.add_subplot()
        if len(train_x) >= SMOOTH_MIN_POINTS:
            ax.plot(train_x, train_y, color=TRAIN_COLOUR, alpha=0.3, linewidth=1, label="train")
            ax.plot(train_x, smoothed(train_y), color=TRAIN_COLOUR, linewidth=2, label="train, smoothed")
        elif len(train_x):
            ax.plot(train_x, train_y, "o-", color=TRAIN_COLOUR, linewidth=1.5, markersize=4, label="train")
        if len(val_x):
            ax.plot(val_x, val_y, "o-", color=VAL_COLOUR, linewidth=1, markersize=5, label="validation")
        if wants_log_scale(np.concatenate([train_y, val_y])):
            ax.set_yscale("log")
        ax.set(title=title, xlabel="step", ylabel="loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
        if len(train_x) or len(val_x):
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no finite loss values", transform=ax.transAxes, ha="center", va="center")


SMOOTH_MIN_POINTS = 20  # fewer points are drawn as they are: a moving average of a handful says little


def smoothed(values: np.ndarray) -> np.ndarray:
    """An exponential moving average of the values, bias-corrected (Adam's correction: the first points
    are not pulled towards 0), spanning about a twentieth of the run, and at least 10 points."""
    span = max(10, len(values) // 20)
    beta = 1 - 2 / (span + 1)  # the decay of an EMA whose centre of mass is that of a `span`-point window
    out, average = np.empty(len(values)), 0.0
    for i, value in enumerate(values):
        average = beta * average + (1 - beta) * value
        out[i] = average / (1 - beta ** (i + 1))
    return out


def wants_log_scale(values: np.ndarray) -> bool:
    """Whether positive values span more than a decade (a log axis shows both ends); never for <= 0."""
    return len(values) > 0 and bool((values > 0).all()) and values.max() / values.min() > 10


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite (step, value) pairs for `key`, sorted by step."""
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None and r.get("step") is not None]
    xy = np.array(pairs, dtype=np.float64).reshape(-1, 2)
    xy = xy[np.isfinite(xy).all(axis=1)]
    xy = xy[np.argsort(xy[:, 0], kind="stable")]
    return xy[:, 0], xy[:, 1]


# ---- the confusion matrix ---------------------------------------------------------------------------------


def write_confusion_png(matrix, path, labels: Sequence | None = None) -> None:
    """Write the heat map of a (K, K) confusion matrix (rows: reference classes, columns: predicted, the
    order of `metrics.confusion_matrix`) as a PNG at path. Each cell shows its count; its colour is the
    count's share of its row, so a rare class's errors show as plainly as a frequent one's (the diagonal
    is then each class's recall)."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"a confusion matrix is a non-empty square matrix, got shape {matrix.shape}")
    k = matrix.shape[0]
    names = [_short(str(label)) for label in labels] if labels is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} labels for a {k}x{k} confusion matrix")
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    side = min(max(k * 60, 280), 1400)  # the grid, in pixels: 60 per class, within bounds
    margin = 7 * max(map(len, names)) + 90  # room for the longest label
    with drawing(path, side + margin + 140, side + margin + 60) as fig:
        ax = fig.add_subplot()
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        if side / k >= 28:  # a count fits in its cell
            for (i, j), count in np.ndenumerate(matrix):
                colour = "white" if shares[i, j] > 0.6 else "black"  # legible on dark and light cells
                ax.text(j, i, str(int(count)), ha="center", va="center", color=colour, fontsize=9)
        step = math.ceil(k / (side / 14))  # label every step-th class when labels would collide
        ticks = list(range(0, k, step))
        is_long = max(map(len, names)) > 2  # longer labels slant so that neighbours do not overlap
        ax.set_xticks(
            ticks,
            [names[j] for j in ticks],
            rotation=45 if is_long else 0,
            ha="right" if is_long else "center",
        )
        ax.set_yticks(ticks, [names[i] for i in ticks])
        ax.set(xlabel="predicted label", ylabel="reference label", title="confusion matrix")
        fig.colorbar(image, ax=ax, shrink=0.8, label="share of the reference row (diagonal: recall)")


def _short(label: str, limit: int = 24) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"
