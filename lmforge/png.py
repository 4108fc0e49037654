"""PNG pictures drawn with NumPy alone: the plots' raster (loss curves, lmforge/train/plot.py; the
confusion matrix, lmforge/eval/plot.py).

lmforge depends on neither matplotlib nor Pillow. A picture is an (H, W, 3) uint8 array; text is a 5x7
bitmap font; `encode_png` writes the array as a PNG (W3C PNG specification, 2nd edition): the 8-byte
signature, then IHDR, IDAT and IEND chunks, each length + type + data + CRC-32, where IDAT is the zlib
stream of the scanlines, each prefixed by its filter type (0, none).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

INK = (40, 40, 40)
BACKGROUND = (255, 255, 255)
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two line colours
SCALE = 2  # font pixels per bitmap pixel: 10x14 characters

# 5x7 glyphs, one int per row, bit 4 the leftmost column. Only what tick labels and the words
# "step", "loss", "train", "val" need; any other character draws as a space.
FONT = {
    "0": (14, 17, 19, 21, 25, 17, 14),
    "1": (4, 12, 4, 4, 4, 4, 14),
    "2": (14, 17, 1, 2, 4, 8, 31),
    "3": (31, 2, 4, 2, 1, 17, 14),
    "4": (2, 6, 10, 18, 31, 2, 2),
    "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14),
    "7": (31, 1, 2, 4, 8, 8, 8),
    "8": (14, 17, 17, 14, 17, 17, 14),
    "9": (14, 17, 17, 15, 1, 2, 12),
    ".": (0, 0, 0, 0, 0, 12, 12),
    "-": (0, 0, 0, 31, 0, 0, 0),
    "+": (0, 4, 4, 31, 4, 4, 0),
    "a": (0, 0, 14, 1, 15, 17, 15),
    "e": (0, 0, 14, 17, 31, 16, 14),
    "i": (4, 0, 12, 4, 4, 4, 14),
    "l": (12, 4, 4, 4, 4, 4, 14),
    "n": (0, 0, 22, 25, 17, 17, 17),
    "o": (0, 0, 14, 17, 17, 17, 14),
    "p": (0, 0, 30, 17, 30, 16, 16),
    "r": (0, 0, 22, 25, 16, 16, 16),
    "s": (0, 0, 14, 16, 14, 1, 30),
    "t": (8, 8, 28, 8, 8, 9, 6),
    "v": (0, 0, 17, 17, 17, 10, 4),
}


def encode_png(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 array as the bytes of an 8-bit truecolour PNG."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"encode_png needs an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    height, width, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # bit depth 8, colour type 2 (RGB), compression 0, filter method 0, no interlace
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 9))
        + chunk(b"IEND", b"")
    )


def paint(img: np.ndarray, xs: np.ndarray, ys: np.ndarray, colour, thickness: int) -> None:
    """Set a thickness x thickness square of pixels at each (x, y), clipped to the image."""
    h, w, _ = img.shape
    xi, yi = np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)
    offsets = range(-(thickness // 2), thickness - thickness // 2)
    for dx in offsets:
        for dy in offsets:
            x, y = xi + dx, yi + dy
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            img[y[inside], x[inside]] = colour


def text_width(text: str) -> int:
    """The width in pixels of `text` drawn by draw_text (glyphs one bitmap pixel apart)."""
    return max(0, len(text) * 6 * SCALE - SCALE)


def draw_text(img: np.ndarray, text: str, x: int, y: int, colour) -> None:
    """Draw `text` with its top-left corner at (x, y); upper case falls back to the lower-case glyph."""
    for i, char in enumerate(text):
        rows = FONT.get(char, FONT.get(char.lower()))
        if rows is None:
            continue
        bits = np.array([[(r >> (4 - c)) & 1 for c in range(5)] for r in rows], dtype=bool)
        ys, xs = np.nonzero(np.kron(bits, np.ones((SCALE, SCALE), dtype=bool)))
        paint(img, xs + x + i * 6 * SCALE, ys + y, colour, thickness=1)
