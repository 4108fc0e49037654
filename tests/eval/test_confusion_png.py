"""The confusion-matrix PNG: the file decodes (by an independent reader) to the drawn array, the grid has
one cell per pair of classes, every cell shows its count and is shaded by it, the axes read 0..K-1, and
the key appears exactly when the labels can be written with the bitmap font."""

import struct
import zlib

import numpy as np
import pytest

from lmforge.eval.metrics import confusion_matrix
from lmforge.eval.plot import draw_confusion, is_drawable, write_confusion_png
from lmforge.png import BACKGROUND, INK, SCALE, draw_text, text_width
from lmforge.train.plot import TRAIN_COLOUR

MATRIX = np.array([[1234, 3, 0, 7], [12, 400, 0, 0], [0, 0, 310, 9], [5, 7, 7, 618]])


def decode_png(data: bytes) -> np.ndarray:
    """A minimal PNG reader for 8-bit RGB, non-interlaced, filter-type-0 images."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour_type, interlace) == (8, 2, 0)
    raw = np.frombuffer(zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT")), np.uint8)
    rows = raw.reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all(), "only filter type 0 is expected"
    return rows[:, 1:].reshape(height, width, 3)


def _is(img, colour):
    return (img == np.array(colour, np.uint8)).all(axis=-1)


def _grid_lines(img, k):
    """x and y of the K+1 grid lines: the columns and rows with the longest runs of ink."""
    ink = _is(img, INK)
    lines = []
    for counts in (ink.sum(axis=0), ink.sum(axis=1)):
        found = np.flatnonzero(counts >= 0.9 * counts.max())
        assert len(found) == k + 1, f"expected {k + 1} grid lines, found {found}"
        lines.append(found)
    return lines


def _reads(mask: np.ndarray, text: str) -> bool:
    """Whether the marked pixels are exactly `text` in the bitmap font, wherever it sits."""
    canvas = np.zeros((7 * SCALE + 4, text_width(text) + 4, 3), np.uint8)
    draw_text(canvas, text, 2, 2, (255, 255, 255))
    return np.array_equal(_crop(mask), _crop(canvas.any(axis=-1)))


def _luminance(rgb):
    return float(np.dot(np.asarray(rgb, np.float64), [0.299, 0.587, 0.114]))  # ITU-R BT.601 weights


def _cell_text(cell):
    """The pixels of a cell that differ from its fill, which is the colour of its corner."""
    return ~(cell == cell[0, 0]).all(axis=-1)


def _crop(mask):
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] if len(ys) else mask[:0, :0]


def test_png_file_decodes_to_the_drawn_image(tmp_path):
    path = tmp_path / "confusion.png"
    write_confusion_png(MATRIX, path, labels=["ant", "eel", "rat", "tin"])
    img = decode_png(path.read_bytes())
    assert np.array_equal(img, draw_confusion(MATRIX, ["ant", "eel", "rat", "tin"]))
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]  # no temporary file left
    write_confusion_png(np.eye(2, dtype=int), path)  # replaces the old picture
    assert decode_png(path.read_bytes()).shape != img.shape


def test_every_cell_shows_its_count_shaded_by_it():
    img = draw_confusion(MATRIX)
    xs, ys = _grid_lines(img, 4)
    assert np.ptp(np.diff(xs)) == 0 and np.array_equal(np.diff(xs), np.diff(ys))  # square cells
    fills = {}
    for i in range(4):
        for j in range(4):
            cell = img[ys[i] + 1 : ys[i + 1], xs[j] + 1 : xs[j + 1]]
            assert _reads(_cell_text(cell), str(MATRIX[i, j])), (
                f"cell ({i}, {j}) does not read {MATRIX[i, j]}"
            )
            fill = tuple(int(c) for c in cell[0, 0])
            ink = cell[_cell_text(cell)][0]
            assert abs(_luminance(ink) - _luminance(cell[0, 0])) > 100, f"cell ({i}, {j}) is hard to read"
            assert fills.setdefault(int(MATRIX[i, j]), fill) == fill  # equal counts, equal shades
    assert fills[0] == BACKGROUND and fills[1234] == TRAIN_COLOUR
    # the more counted, the darker: every channel falls from white (255) towards the blue
    by_count = np.array([fills[c] for c in sorted(fills)])
    assert (np.diff(by_count, axis=0) <= 0).all() and (np.diff(by_count.sum(axis=1)) < 0).all()


def test_axes_read_the_class_indices():
    img = draw_confusion(MATRIX)
    xs, ys = _grid_lines(img, 4)
    for i in range(4):
        row_label = ~_is(img[ys[i] + 1 : ys[i + 1], : xs[0]], BACKGROUND)
        col_label = ~_is(img[ys[-1] + 1 :, xs[i] + 1 : xs[i + 1]], BACKGROUND)
        assert _reads(row_label, str(i)) and _reads(col_label, str(i))


def test_key_lists_the_labels_when_the_font_can_write_them():
    labels = ["ant", "eel", "rat", "tin"]
    img = draw_confusion(MATRIX, labels)
    xs, _ = _grid_lines(img, 4)
    key = img[:, xs[-1] + 1 :]
    rows = np.flatnonzero((~_is(key, BACKGROUND)).any(axis=1))
    lines = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)  # runs of rows with ink: one per line
    assert len(lines) == 4
    for i, run in enumerate(lines):
        assert _reads(~_is(key[run[0] : run[-1] + 1], BACKGROUND), f"{i} {labels[i]}")
    # "m", "g" and "h" are not in the font: no key, the grid stands alone
    assert not is_drawable("spam") and is_drawable("Rat 12")
    plain = draw_confusion(MATRIX, ["spam", "ham", "egg", "tin"])
    assert plain.shape[1] < img.shape[1] and np.array_equal(plain, draw_confusion(MATRIX))


def test_from_predictions_and_many_classes():
    matrix, labels = confusion_matrix(["b", "a", "a"], ["a", "a", "b"])
    img = draw_confusion(matrix, labels)
    xs, ys = _grid_lines(img, 2)
    assert matrix.tolist() == [[1, 1], [1, 0]]
    assert _reads(_cell_text(img[ys[0] + 1 : ys[1], xs[1] + 1 : xs[2]]), "1")
    assert _reads(_cell_text(img[ys[1] + 1 : ys[2], xs[1] + 1 : xs[2]]), "0")
    # 150 classes: cells shrink so the picture stays about 2000 pixels wide; counts no longer fit
    big = draw_confusion(np.ones((150, 150), np.int64))
    assert big.shape[0] <= 2100 and big.shape[1] <= 2100
    with pytest.raises(ValueError, match="square"):
        draw_confusion(np.zeros((2, 3), np.int64))
