"""The loss-curve PNG written at the end of training, drawn with NumPy alone.

lmforge depends on neither matplotlib nor Pillow, so this file rasterises the plot itself (a
(H, W, 3) uint8 array: grid, axes, ticks, the labels in a 5x7 bitmap font, the train line, the
validation markers, a legend); lmforge/png.py has the font and encodes the array as a PNG.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from lmforge.png import BACKGROUND, BLUE, INK, ORANGE, SCALE, draw_text, encode_png, paint, text_width

TRAIN_COLOUR, VAL_COLOUR = BLUE, ORANGE
GRID_COLOUR = (228, 228, 228)


def write_loss_png(
    rows: list[dict], path, *, width: int = 800, height: int = 500, title: str = "loss"
) -> None:
    """Plot "loss" (line) and "val_loss" (markers) against "step" from metrics rows, as a PNG at path.

    Rows whose values are missing, NaN or infinite are skipped; the file is replaced atomically.
    """
    if width < 240 or height < 160:
        raise ValueError(f"a loss plot needs at least 240x160 pixels, got {width}x{height}")
    train_x, train_y = _series(rows, "loss")
    val_x, val_y = _series(rows, "val_loss")
    frame = _Frame.fit(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]), width, height)
    img = np.full((height, width, 3), BACKGROUND, np.uint8)
    frame.draw_axes(img)
    draw_text(img, title, (width - text_width(title)) // 2, 10, INK)
    if len(train_x):
        px, py = frame.to_pixels(train_x, train_y)
        _draw_polyline(img, *_thin(px, py), TRAIN_COLOUR, thickness=2)
        if len(px) == 1:  # a line of one point is invisible
            _draw_dots(img, px, py, TRAIN_COLOUR, radius=3)
    if len(val_x):
        px, py = frame.to_pixels(val_x, val_y)
        _draw_polyline(img, px, py, VAL_COLOUR, thickness=1)
        _draw_dots(img, px, py, VAL_COLOUR, radius=4)
    entries = [("train", TRAIN_COLOUR, False)] if len(train_x) else []
    entries += [("val", VAL_COLOUR, True)] if len(val_x) else []
    if entries:
        _draw_legend(img, frame, entries)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(encode_png(img))
    os.replace(tmp, path)


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Finite (step, value) pairs for `key`, sorted by step."""
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None and r.get("step") is not None]
    xy = np.array(pairs, dtype=np.float64).reshape(-1, 2)
    xy = xy[np.isfinite(xy).all(axis=1)]
    xy = xy[np.argsort(xy[:, 0], kind="stable")]
    return xy[:, 0], xy[:, 1]


class _Frame:
    """The plot area in pixels and the data range it shows; owns the grid, axes and tick labels."""

    def __init__(self, x_range, y_range, x_ticks, y_ticks, box):
        (self.x0, self.x1), (self.y0, self.y1) = x_range, y_range
        self.x_ticks, self.y_ticks = x_ticks, y_ticks
        self.left, self.top, self.right, self.bottom = box

    @classmethod
    def fit(cls, xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> _Frame:
        x_range = _padded_range(xs, pad=0.02)
        y_range = _padded_range(ys, pad=0.06)
        top, bottom = 40, height - 3 * 7 * SCALE - 18  # below: a row of x labels and "step"
        y_ticks = _ticks(*y_range, target=min(6, max(2, (bottom - top) // (3 * 7 * SCALE))))
        left = 8 + max(text_width(label) for _, label in y_ticks) + 12  # label, gap, tick mark
        for target in (8, 6, 4, 3, 2):  # fewer x ticks until their labels do not collide
            x_ticks = _ticks(*x_range, target=target, min_step=1.0)  # steps are integers
            widest = max(text_width(label) for _, label in x_ticks)
            right = width - max(20, text_width(x_ticks[-1][1]) // 2 + 6)  # the last label fits
            if len(x_ticks) * (widest + 4 * SCALE) <= right - left:
                break
        return cls(x_range, y_range, x_ticks, y_ticks, (left, top, right, bottom))

    def to_pixels(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        px = self.left + (xs - self.x0) / (self.x1 - self.x0) * (self.right - self.left)
        py = self.bottom - (ys - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)
        return px, py

    def draw_axes(self, img: np.ndarray) -> None:
        left, top, right, bottom = self.left, self.top, self.right, self.bottom
        glyph_h = 7 * SCALE
        for value, label in self.x_ticks:
            x = round(float(self.to_pixels(np.array(value), np.array(self.y0))[0]))
            img[top:bottom, x] = GRID_COLOUR
            img[bottom : bottom + 6, x] = INK
            draw_text(img, label, x - text_width(label) // 2, bottom + 10, INK)
        for value, label in self.y_ticks:
            y = round(float(self.to_pixels(np.array(self.x0), np.array(value))[1]))
            img[y, left:right] = GRID_COLOUR
            img[y, left - 6 : left] = INK
            draw_text(img, label, left - 12 - text_width(label), y - glyph_h // 2, INK)
        img[top : bottom + 1, [left, right]] = INK
        img[[top, bottom], left : right + 1] = INK
        draw_text(img, "step", (left + right - text_width("step")) // 2, bottom + 14 + glyph_h, INK)


def _padded_range(values: np.ndarray, pad: float) -> tuple[float, float]:
    if not len(values):
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-9 * max(1.0, abs(hi)):  # one point or a constant: centre it
        half = 0.1 * abs(hi) or 1.0
        return lo - half, hi + half
    return lo - pad * (hi - lo), hi + pad * (hi - lo)


def _ticks(lo: float, hi: float, target: int, min_step: float = 0.0) -> list[tuple[float, str]]:
    """About `target` round values (1, 2 or 5 times a power of ten apart) in [lo, hi], labelled."""
    raw = (hi - lo) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = max(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), min_step)
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    # digits after the point: enough to tell neighbouring ticks apart, and no more
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    use_exp = max(abs(lo), abs(hi)) >= 1e6 or step < 1e-3
    labels = []
    for k in range(first, last + 1):
        value = k * step
        text = ("0" if k == 0 else f"{value:.3g}") if use_exp else f"{value:.{decimals}f}"
        labels.append((value, text))
    return labels


def _thin(px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first, last, lowest and highest point per pixel column (M4 downsampling).

    A long run has far more steps than pixels; these four points draw the same picture.
    """
    cols = np.floor(px).astype(np.int64)
    if len(px) <= 4 * (cols.max() - cols.min() + 1):
        return px, py
    starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
    ends = np.r_[starts[1:], len(px)]
    keep = [[s, s + int(py[s:e].argmin()), s + int(py[s:e].argmax()), e - 1] for s, e in zip(starts, ends)]
    keep = np.unique(np.array(keep).ravel())
    return px[keep], py[keep]


def _draw_polyline(img: np.ndarray, px: np.ndarray, py: np.ndarray, colour, thickness: int) -> None:
    """Sample every segment at least once per pixel of its longer side, then paint the samples."""
    if len(px) == 1:
        paint(img, px, py, colour, thickness)
        return
    dx, dy = np.diff(px), np.diff(py)
    n = np.ceil(np.maximum(np.abs(dx), np.abs(dy))).astype(np.int64) + 1  # samples per segment
    seg = np.repeat(np.arange(len(dx)), n)
    offset = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # index within its segment
    t = offset / np.repeat(np.maximum(n - 1, 1), n)
    paint(img, px[seg] + t * dx[seg], py[seg] + t * dy[seg], colour, thickness)


def _draw_dots(img: np.ndarray, px: np.ndarray, py: np.ndarray, colour, radius: int) -> None:
    for dx in range(-radius, radius + 1):
        for dy in range(-radius, radius + 1):
            if dx * dx + dy * dy <= radius * radius + 1:
                paint(img, px + dx, py + dy, colour, thickness=1)


def _draw_legend(img: np.ndarray, frame: _Frame, entries: list[tuple[str, tuple, bool]]) -> None:
    """A boxed key in whichever inner corner of the plot the curves cover least."""
    line_h, swatch = 7 * SCALE + 8, 24
    w = 8 + swatch + 8 + max(text_width(label) for label, _, _ in entries) + 10
    h = 6 + line_h * len(entries)
    corners = [
        (frame.right - 10 - w, frame.top + 10),
        (frame.right - 10 - w, frame.bottom - 10 - h),
        (frame.left + 10, frame.top + 10),
        (frame.left + 10, frame.bottom - 10 - h),
    ]
    colours = np.array([TRAIN_COLOUR, VAL_COLOUR], np.uint8)

    def covered(corner):
        patch = img[corner[1] : corner[1] + h, corner[0] : corner[0] + w]
        return int((patch[:, :, None, :] == colours).all(-1).any(-1).sum())

    x, y = min(corners, key=covered)  # min() keeps the first of equals: top right by default
    img[y : y + h, x : x + w] = BACKGROUND
    img[[y, y + h - 1], x : x + w] = INK
    img[y : y + h, [x, x + w - 1]] = INK
    for i, (label, colour, is_marker) in enumerate(entries):
        mid = y + 6 + i * line_h + 7 * SCALE // 2
        if is_marker:
            _draw_dots(img, np.array([x + 8 + swatch / 2]), np.array([mid]), colour, radius=4)
        else:
            img[mid - 1 : mid + 1, x + 8 : x + 8 + swatch] = colour
        draw_text(img, label, x + 8 + swatch + 8, mid - 7 * SCALE // 2, colour=INK)
