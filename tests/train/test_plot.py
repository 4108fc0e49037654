"""The loss plot: the PNG bytes decode (by an independent reader) to the exact array, and the
picture has the right size, colours and direction for the data it was given."""

import math
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.train.plot import TRAIN_COLOUR, VAL_COLOUR, encode_png, write_loss_png


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
    assert pos == len(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    width, height, depth, colour_type, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    assert (depth, colour_type, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    rows = []
    for y in range(height):
        line = raw[y * stride : (y + 1) * stride]
        assert line[0] == 0, "only filter type 0 is expected"
        rows.append(np.frombuffer(line[1:], np.uint8).reshape(width, 3))
    return np.stack(rows)


def _loss_rows(n=300, start=0, decreasing=True, val_every=50):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        loss = 2.0 + 6.0 * math.exp(-i / 60) + float(rng.normal(0, 0.05))
        row = {"step": start + i, "loss": loss if decreasing else 10.0 - loss}
        if val_every and i % val_every == val_every - 1:
            row["val_loss"] = row["loss"] + 0.1
        rows.append(row)
    return rows


def _render(tmp_path, rows, **kwargs):
    path = tmp_path / "loss.png"
    write_loss_png(rows, path, **kwargs)
    return decode_png(path.read_bytes())


def _mask(img, colour):
    return (img == np.array(colour, np.uint8)).all(axis=-1)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_encode_png_round_trips_exactly(height, width, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(rgb)), rgb)


def test_encode_png_rejects_other_arrays():
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), np.float32))


def test_plot_has_the_size_and_both_colours(tmp_path):
    img = _render(tmp_path, _loss_rows(), width=640, height=360)
    assert img.shape == (360, 640, 3)
    assert _mask(img, TRAIN_COLOUR).sum() > 300  # a line, not just the legend swatch
    assert _mask(img, VAL_COLOUR).sum() > 6 * 20  # six val markers of radius 4
    assert list((tmp_path).iterdir()) == [tmp_path / "loss.png"]  # no temp file left behind


def test_no_val_rows_means_no_val_colour(tmp_path):
    img = _render(tmp_path, _loss_rows(val_every=0))
    assert _mask(img, TRAIN_COLOUR).any() and not _mask(img, VAL_COLOUR).any()


def _mean_row(mask, columns):
    return np.nonzero(mask[:, columns])[0].mean()


@pytest.mark.parametrize("decreasing", [True, False])
def test_curve_goes_the_way_the_loss_goes(tmp_path, decreasing):
    img = _render(tmp_path, _loss_rows(decreasing=decreasing, val_every=0))
    train = _mask(img, TRAIN_COLOUR)
    width = img.shape[1]
    left, middle = _mean_row(train, slice(0, width // 3)), _mean_row(train, slice(width // 3, 2 * width // 3))
    # image rows grow downwards: a high loss on the left is a small row index on the left
    assert (left < middle) == decreasing


@pytest.mark.parametrize(
    "rows",
    [
        [{"step": 7, "loss": 3.0}],
        [{"step": s, "loss": 2.5} for s in range(20)],
        [{"step": s, "loss": 0.0} for s in range(20)],
        [{"step": 0, "val_loss": 4.0}],
        [{"step": s, "loss": 1e7 / (s + 1)} for s in range(3)],
        [{"step": s, "loss": 1e-6 * s} for s in range(5)],
    ],
    ids=["single", "constant", "zero", "only-val", "huge", "tiny"],
)
def test_degenerate_curves_still_draw(tmp_path, rows):
    img = _render(tmp_path, rows)
    assert img.shape == (500, 800, 3)
    assert (_mask(img, TRAIN_COLOUR) | _mask(img, VAL_COLOUR)).sum() > 20


def test_empty_rows_draw_empty_axes(tmp_path):
    img = _render(tmp_path, [])
    assert not _mask(img, TRAIN_COLOUR).any() and (img < 128).any()


def test_non_finite_values_are_skipped(tmp_path):
    rows = [r for r in _loss_rows(40) if r["step"] not in (10, 11, 25)]
    clean = _render(tmp_path, rows)
    bad = [
        *rows,
        {"step": 10, "loss": float("nan")},
        {"step": 11, "loss": float("inf")},
        {"step": 25, "loss": -float("inf"), "val_loss": float("nan")},
    ]
    assert np.array_equal(_render(tmp_path, sorted(bad, key=lambda r: r["step"])), clean)


def test_steps_need_not_start_at_zero(tmp_path):
    late = _render(tmp_path, _loss_rows(start=120_000))
    assert _mask(late, TRAIN_COLOUR).sum() > 300


def test_many_steps_render(tmp_path):
    rng = np.random.default_rng(1)
    rows = [{"step": s, "loss": 3.0 + float(v)} for s, v in enumerate(rng.normal(0, 0.3, 200_000))]
    img = _render(tmp_path, rows)
    # a noisy band: the line fills a tall strip in a middle column, not a single pixel
    assert _mask(img, TRAIN_COLOUR)[:, 400].sum() > 50


def test_overwrites_an_existing_plot(tmp_path):
    (tmp_path / "loss.png").write_bytes(b"old")
    assert _render(tmp_path, _loss_rows()).shape == (500, 800, 3)


def test_pillow_reads_the_file(tmp_path):
    image = pytest.importorskip("PIL.Image")
    path = tmp_path / "loss.png"
    write_loss_png(_loss_rows(), path)
    with image.open(path) as im:
        assert im.size == (800, 500) and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), decode_png(path.read_bytes()))
