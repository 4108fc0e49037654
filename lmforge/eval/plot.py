"""The confusion matrix as a PNG heat map, drawn with NumPy (lmforge/png.py: the encoder and the font).

Rows are reference classes and columns predicted classes (the order of `metrics.confusion_matrix`); each
cell shows its count and is shaded from white (0) to blue (the largest count) by the square root of its
share of the largest count, so that a few errors beside a large diagonal still show; row indices are written
left of the grid and column indices below it. When every label can be written with the 5x7 bitmap font
of lmforge/png.py, a key to the right lists "index label"; otherwise the indices stand alone and
the labels are the ones in that order (the evaluate command prints them in its table).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from lmforge.png import BACKGROUND, BLUE, FONT, INK, SCALE, draw_text, encode_png, text_width

GLYPH_H = 7 * SCALE
MAX_GRID = 2000  # pixels per side: past that, cells shrink and counts that no longer fit are left out
MARGIN = 16


def is_drawable(text: str) -> bool:
    """Whether the bitmap font has every character of text (upper case falls back to lower case)."""
    return all(ch == " " or ch in FONT or ch.lower() in FONT for ch in text)


def draw_confusion(matrix, labels=None) -> np.ndarray:
    """The heat map of a (K, K) count matrix as an (H, W, 3) uint8 image."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"a confusion matrix is a non-empty square matrix, got shape {matrix.shape}")
    k = matrix.shape[0]
    counts = [[str(int(c)) for c in row] for row in matrix]
    widest = max(text_width(text) for row in counts for text in row)
    cell = min(max(widest + 4 * SCALE, GLYPH_H + 4 * SCALE, 32), max(MAX_GRID // k, 3))
    index_w = text_width(str(k - 1))
    key = [f"{i} {label}" for i, label in enumerate(labels)] if labels is not None else []
    key = key if key and all(map(is_drawable, key)) else []
    left, top = MARGIN + index_w + 2 * SCALE, MARGIN
    right, bottom = left + k * cell, top + k * cell  # the grid's last lines
    width = right + 1 + (2 * MARGIN + max(map(text_width, key)) if key else MARGIN)
    height = max(bottom + 1 + 2 * SCALE + GLYPH_H + MARGIN, top + len(key) * (GLYPH_H + 6) + MARGIN)
    img = np.full((height, width, 3), BACKGROUND, np.uint8)
    _draw_cells(img, matrix, counts, cell, left, top)
    # with small cells, label every step-th row and column so that the labels do not collide
    for i in range(0, k, math.ceil((GLYPH_H + 2) / cell)):
        y = top + i * cell + (cell + 1 - GLYPH_H) // 2
        draw_text(img, str(i), left - 2 * SCALE - text_width(str(i)), y, INK)
    for j in range(0, k, math.ceil((index_w + 2 * SCALE) / cell)):
        x = left + j * cell + (cell + 1 - text_width(str(j))) // 2
        draw_text(img, str(j), x, bottom + 1 + 2 * SCALE, INK)
    for i, line in enumerate(key):
        draw_text(img, line, right + 1 + MARGIN, top + i * (GLYPH_H + 6), INK)
    return img


def _draw_cells(img: np.ndarray, matrix: np.ndarray, counts, cell: int, left: int, top: int) -> None:
    k = matrix.shape[0]
    peak = max(int(matrix.max()), 1)
    white, blue = np.array(BACKGROUND, np.float64), np.array(BLUE, np.float64)
    for i in range(k):
        for j in range(k):
            share = math.sqrt(int(matrix[i, j]) / peak)
            fill = np.rint(white + share * (blue - white)).astype(np.uint8)
            y, x = top + i * cell, left + j * cell
            img[y : y + cell, x : x + cell] = fill
            text = counts[i][j]
            if max(text_width(text), GLYPH_H) + 2 * SCALE < cell:  # the count fits inside the lines
                # white on dark cells, dark on light ones: the fill's luminance passes halfway between
                # INK's and white's at a share of about 0.7
                ink = BACKGROUND if share > 0.7 else INK
                tx, ty = x + (cell + 1 - text_width(text)) // 2, y + (cell + 1 - GLYPH_H) // 2
                draw_text(img, text, tx, ty, ink)
    grid = np.arange(k + 1) * cell
    img[top + grid, left : left + k * cell + 1] = INK
    img[top : top + k * cell + 1, left + grid] = INK


def write_confusion_png(matrix, path, labels=None) -> None:
    """Write the heat map of a (K, K) confusion matrix as a PNG at path (replaced atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(encode_png(draw_confusion(matrix, labels)))
    os.replace(tmp, path)
