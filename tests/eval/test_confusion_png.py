"""The confusion-matrix picture: a PNG that grows with the number of classes (within bounds), its cells
coloured by their share of the row (so a rare class's recall shows as plainly as a frequent one's), and
written by `evaluate` and `finetune` beside their metrics for a classifier."""

import json

import numpy as np
import pytest
from matplotlib import colormaps
from pictures import assert_drawn, png_size, read_png, share_of

from lmforge.eval.metrics import confusion_matrix
from lmforge.eval.plot import write_confusion_png
from lmforge.train.finetune import confusion_png_path, write_metrics
from lmforge.train.tasks.classification import label_metrics

MATRIX = np.array([[1234, 3, 0, 7], [12, 400, 0, 0], [0, 0, 310, 9], [5, 7, 7, 618]])
FULL = tuple(round(255 * c) for c in colormaps["Blues"](1.0)[:3])  # the colour of a share of 1


def _draw(tmp_path, matrix, labels=None, name="confusion.png"):
    path = tmp_path / name
    write_confusion_png(matrix, path, labels)
    return path


def test_the_picture_is_drawn_and_replaced_atomically(tmp_path):
    path = _draw(tmp_path, MATRIX, ["ant", "eel", "rat", "tin"])
    assert_drawn(path)
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]  # no temporary file left
    before = png_size(path)
    write_confusion_png(np.eye(12, dtype=int), path)  # replaces the old picture
    assert png_size(path) != before


def test_colours_are_shares_of_the_row(tmp_path):
    """A class seen once and always right is as dark as one seen a thousand times: its recall is 1."""
    frequent_and_rare = read_png(_draw(tmp_path, [[1000, 0], [0, 1]], name="a.png"))
    both_frequent = read_png(_draw(tmp_path, [[1000, 0], [0, 1000]], name="b.png"))
    one_row_seen = read_png(_draw(tmp_path, [[1000, 0], [0, 0]], name="c.png"))  # a row of zeros: no NaN
    dark = [share_of(p, FULL, tolerance=4) for p in (frequent_and_rare, both_frequent, one_row_seen)]
    assert dark[0] == pytest.approx(dark[1], rel=0.1)
    assert dark[0] == pytest.approx(2 * dark[2], rel=0.2)  # two full cells (and the colour bar's top)


def test_the_picture_grows_with_the_classes_within_bounds(tmp_path):
    sizes = [png_size(_draw(tmp_path, np.eye(k, dtype=int) * 5, name=f"{k}.png")) for k in (2, 8, 20, 150)]
    assert sizes[0] == sizes[1] or sizes[0][0] < sizes[1][0]
    assert sizes[1][0] < sizes[2][0] <= sizes[3][0] < 2000 and sizes[3][1] < 2000
    assert_drawn(tmp_path / "150.png")


def test_long_and_non_ascii_labels_draw(tmp_path):
    labels = ["a rather long label that goes on and on", "négatif", "2", "x"]
    assert_drawn(_draw(tmp_path, MATRIX, labels))


def test_bad_matrices_are_refused(tmp_path):
    with pytest.raises(ValueError, match="square"):
        write_confusion_png(np.zeros((2, 3), np.int64), tmp_path / "x.png")
    with pytest.raises(ValueError, match="3 labels"):
        write_confusion_png(np.eye(2, dtype=int), tmp_path / "x.png", labels=["a", "b", "c"])
    assert not list(tmp_path.iterdir())


def test_a_classifiers_metrics_carry_the_matrix_and_are_drawn_beside(tmp_path):
    """What `evaluate` and `finetune` write: the metrics JSON with the matrix, and its picture."""
    names = ["cooking", "space", "sport"]
    predicted, gold = [0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 0]
    metrics = label_metrics(predicted, gold, names)
    expected, _ = confusion_matrix([names[i] for i in predicted], [names[i] for i in gold], labels=names)
    assert metrics["confusion_matrix"] == {"labels": names, "counts": expected.tolist()}
    path = tmp_path / "eval-validation.json"
    write_metrics(metrics, path)
    assert json.loads(path.read_text())["confusion_matrix"]["counts"] == expected.tolist()
    assert confusion_png_path(path) == tmp_path / "eval-validation-confusion.png"
    assert_drawn(confusion_png_path(path))
    write_metrics({"rougeL": 0.5}, tmp_path / "other.json")  # no matrix, no picture
    assert not confusion_png_path(tmp_path / "other.json").exists()
