"""The loss curve a training run ends with (OUT/loss.png): a PNG of the size asked for, with the training
line, its smoothed curve and the validation markers in their colours; a log axis when the loss spans
more than a decade; missing and non-finite values skipped; degenerate runs still drawn."""

import math

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from pictures import assert_drawn, png_size, read_png, share_of

from lmforge.errors import LmforgeError
from lmforge.eval.plot import TRAIN_COLOUR, VAL_COLOUR, smoothed, wants_log_scale, write_loss_png

TRAIN_RGB, VAL_RGB = (tuple(round(255 * c) for c in to_rgb(name)) for name in (TRAIN_COLOUR, VAL_COLOUR))


def _loss_rows(n=300, start=0, val_every=50):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        row = {"step": start + i, "loss": 2.0 + 6.0 * math.exp(-i / 60) + float(rng.normal(0, 0.05))}
        if val_every and i % val_every == val_every - 1:
            row["val_loss"] = row["loss"] + 0.1
        rows.append(row)
    return rows


def _draw(tmp_path, rows, **kwargs):
    path = tmp_path / "loss.png"
    write_loss_png(rows, path, **kwargs)
    return path


def test_the_picture_has_the_size_asked_for_and_both_curves(tmp_path):
    path = _draw(tmp_path, _loss_rows(), width=640, height=360)
    assert png_size(path) == (640, 360)
    pixels = assert_drawn(path)
    assert share_of(pixels, TRAIN_RGB) > 0.002  # the smoothed line, not only the legend's swatch
    assert share_of(pixels, VAL_RGB) > 0.001  # six markers and their line
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_no_validation_rows_means_no_validation_colour(tmp_path):
    pixels = read_png(_draw(tmp_path, _loss_rows(val_every=0)))
    assert share_of(pixels, TRAIN_RGB) > 0.002 and share_of(pixels, VAL_RGB) == 0


def test_a_log_axis_when_the_loss_spans_more_than_a_decade():
    assert wants_log_scale(np.array([10.8, 5.0, 2.1, 0.9]))
    assert not wants_log_scale(np.array([3.0, 2.5, 2.0]))
    assert not wants_log_scale(np.array([1.0, 0.0]))  # a log axis cannot show 0
    assert not wants_log_scale(np.array([]))


def test_the_log_axis_changes_the_picture(tmp_path):
    """An exponential fall over two decades is a straight line on the log axis it gets; the same fall
    lifted by 20 (within a decade: a linear axis) hugs the bottom of its plot after the first steps."""
    rows = [{"step": s, "loss": 100.0 * 0.98**s} for s in range(240)]  # 100 down to about 0.8
    log_axis = read_png(_draw(tmp_path, rows))
    linear_axis = read_png(_draw(tmp_path, [{"step": r["step"], "loss": 20 + r["loss"]} for r in rows]))
    # image rows grow downwards: the line's mean row is higher up (smaller) on the log axis
    mean_rows = [np.nonzero(_is_train_colour(p))[0].mean() for p in (log_axis, linear_axis)]
    assert mean_rows[0] < mean_rows[1] - 30


def _is_train_colour(pixels):
    return (np.abs(pixels[..., :3] * 255 - np.array(TRAIN_RGB)) <= 8).all(axis=-1)


def test_smoothing_is_an_unbiased_moving_average():
    assert np.allclose(smoothed(np.full(100, 3.0)), 3.0)  # no pull towards 0 at the start
    rng = np.random.default_rng(0)
    noisy = 5.0 - np.linspace(0, 3, 500) + rng.normal(0, 0.3, 500)
    smooth = smoothed(noisy)
    assert np.diff(smooth).std() < np.diff(noisy).std() / 5  # far less jagged
    assert abs(smooth[-1] - 2.0) < 0.2  # and still where the curve ends


@pytest.mark.parametrize(
    "rows",
    [
        [{"step": 7, "loss": 3.0}],
        [{"step": s, "loss": 2.5} for s in range(20)],
        [{"step": s, "loss": 0.0} for s in range(20)],
        [{"step": 0, "val_loss": 4.0}],
        [{"step": s, "loss": 1e7 / (s + 1)} for s in range(3)],
        [{"step": s, "loss": 1e-6 * s} for s in range(5)],
        _loss_rows(start=120_000),
    ],
    ids=["single", "constant", "zero", "only-val", "huge", "tiny", "late-start"],
)
def test_degenerate_curves_still_draw(tmp_path, rows):
    pixels = read_png(_draw(tmp_path, rows))
    assert pixels.shape[:2] == (500, 800)
    assert share_of(pixels, TRAIN_RGB) + share_of(pixels, VAL_RGB) > 0.0002  # 80 pixels


def test_no_rows_draw_empty_axes(tmp_path):
    pixels = read_png(_draw(tmp_path, []))
    assert share_of(pixels, TRAIN_RGB) == 0 and (pixels[..., :3] < 0.5).any()  # axes and a note


def test_missing_and_non_finite_values_are_skipped(tmp_path):
    rows = [r for r in _loss_rows(40) if r["step"] not in (10, 11, 25)]
    clean = read_png(_draw(tmp_path, rows))
    bad = [
        *rows,
        {"step": 10, "loss": float("nan")},
        {"step": 11, "loss": float("inf")},
        {"step": 25, "loss": -float("inf"), "val_loss": float("nan")},
        {"step": 30, "lr": 1e-3},
    ]
    assert np.array_equal(read_png(_draw(tmp_path, sorted(bad, key=lambda r: r["step"]))), clean)


def test_many_steps_draw(tmp_path):
    rng = np.random.default_rng(1)
    rows = [{"step": s, "loss": 3.0 + float(v)} for s, v in enumerate(rng.normal(0, 0.3, 200_000))]
    assert_drawn(_draw(tmp_path, rows))


def test_an_existing_picture_is_replaced(tmp_path):
    (tmp_path / "loss.png").write_bytes(b"old")
    assert png_size(_draw(tmp_path, _loss_rows())) == (800, 500)


def test_bad_sizes_and_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 240x160"):
        write_loss_png(_loss_rows(), tmp_path / "loss.png", width=100, height=100)
    with pytest.raises(LmforgeError, match="cannot write"):
        write_loss_png(_loss_rows(), tmp_path / "missing" / "loss.png")


def test_a_training_run_ends_with_its_loss_curve(tmp_path):
    """The loop draws OUT/loss.png from OUT/metrics.jsonl when it finishes: both curves are in it."""
    from lmforge.train.pretrain import PretrainConfig, pretrain

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("the sea is blue and wide, and the waves come in. " * 400)
    config = PretrainConfig(
        data=[str(tmp_path / "text")], vocab_size=300, out=str(tmp_path / "run"), max_steps=30, seq_len=32,
        eval_every=10, eval_batches=1, warmup_steps=2, sample_tokens=0, precision="float32", progress=False,
    )  # fmt: skip
    pretrain(config)
    pixels = assert_drawn(tmp_path / "run" / "loss.png")
    assert share_of(pixels, TRAIN_RGB) > 0.002 and share_of(pixels, VAL_RGB) > 0.0005
