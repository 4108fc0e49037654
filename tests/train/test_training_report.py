"""What a pretraining run shows as it trains (`make demo` teaches): at each evaluation the training loss, the
validation loss and its perplexity exp(val loss), and a sample from the same prompt; at the end, the loss
curve, the guided tour and `make chat`. A real `lmforge pretrain` (in-process, through cli.main) on a tiny
corpus, its printed numbers checked against its own metrics.jsonl."""

import contextlib
import io
import math
import re
from pathlib import Path

import pytest
from test_pretrain_resume import corpus as code_like_corpus

from lmforge import cli
from lmforge.errors import LmforgeError
from lmforge.train.metrics import read_metrics
from lmforge.train.pretrain import PretrainConfig
from lmforge.train.report import EvaluationReport, closing_lines

EVAL_LINE = re.compile(
    r"^step (\d+)/4  train loss (\d+\.\d{4})  val loss (\d+\.\d{4})  perplexity (\d+\.\d)  \d+:\d\d elapsed$",
    re.MULTILINE,
)
SAMPLE = re.compile(r"^--- sample at step (\d+) ---\n(.*?)\n---$", re.MULTILINE | re.DOTALL)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step pretraining run evaluated at steps 2 and 4: (its stdout, its directory)."""
    root = tmp_path_factory.mktemp("report")
    data = code_like_corpus(root / "corpus", n_files=6)
    out = root / "run"
    argv = [
        "pretrain", "--data", str(data), "--out", str(out), "--preset", "tiny", "--vocab-size", "320",
        "--val-fraction", "0.2", "--max-steps", "4", "--eval-every", "2", "--eval-batches", "1",
        "--batch-size", "4", "--seq-len", "32", "--warmup-steps", "1", "--sample-tokens", "8",
        "--sample-prompt", "def value", "--precision", "float32", "--no-progress", "--seed", "5",
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # capsys is per test; this run is shared by the module's
        assert cli.main(argv) == 0
    return printed.getvalue(), out


@pytest.mark.slow  # the shared run takes about 3 s
def test_each_evaluation_shows_the_loss_and_a_perplexity_that_is_exp_of_the_validation_loss(run):
    printed, out = run
    lines = EVAL_LINE.findall(printed)
    assert [int(step) for step, *_ in lines] == [2, 4], printed
    rows = read_metrics(out / "metrics.jsonl")
    for step, train_loss, val_loss, ppl in lines:
        step = int(step)
        row = rows[step - 1]
        assert float(val_loss) == pytest.approx(row["val_loss"], abs=5e-5)
        # the printed perplexity is exp of the printed validation loss, within their rounding
        assert float(ppl) == pytest.approx(math.exp(float(val_loss)), abs=0.05 + float(ppl) * 1e-4)
        assert float(ppl) == pytest.approx(row["val_ppl"], abs=0.05)
        since_last = [r["loss"] for r in rows[step - 2 : step]]  # the steps since the last evaluation
        assert float(train_loss) == pytest.approx(sum(since_last) / len(since_last), abs=5e-5)
    assert printed.count("at each evaluation (every 2 steps):") == 1  # the legend, once
    assert "perplexity   exp(val loss)" in printed and "untrained: about 320, the vocabulary" in printed


@pytest.mark.slow  # the shared run takes about 3 s
def test_each_evaluation_samples_the_same_prompt(run):
    printed, _ = run
    samples = SAMPLE.findall(printed)
    assert [int(step) for step, _ in samples] == [2, 4], printed
    for _, text in samples:
        assert text.startswith("def value") and len(text) > len("def value")
    assert "'def value' continued by 8 tokens, the same seed each time" in printed


@pytest.mark.slow  # the shared run takes about 3 s
def test_the_end_points_to_the_loss_curve_the_tour_and_make_chat(run):
    printed, out = run
    end = printed[printed.index("finished at step 4") :]
    assert f"the loss curve: {out / 'loss.png'}" in end and (out / "loss.png").is_file()
    assert f"try it: lmforge generate --model {out} --prompt 'def value' --echo" in end
    assert "docs/tour.md" in end and "make chat" in end
    assert (Path(__file__).parents[2] / "Makefile").read_text().count("\nchat:") == 1  # the target it names


def test_the_report_of_a_task_shows_its_metrics_and_leaves_out_skipped_steps():
    report = EvaluationReport(10, 5)
    report.add({"loss": 2.0})
    report.add({"loss": float("nan"), "skipped": True})
    report.add({"loss": 1.0})
    text = report.lines({"step": 5, "val_loss": 0.5, "val_accuracy": 0.875, "elapsed_s": 75.0})
    assert (
        text.splitlines()[-1] == "step 5/10  train loss 1.5000  val loss 0.5000  accuracy 0.875  1:15 elapsed"
    )
    assert "perplexity" not in text and "the task's metrics" in text  # a per-example loss has no perplexity
    report.add({"loss": 3.0})
    assert report.lines({"step": 10}) == "step 10/10  train loss 3.0000  0:00 elapsed"  # no legend again


def test_a_sample_prompt_is_for_the_causal_objective_and_not_empty():
    with pytest.raises(LmforgeError, match=r"--sample-prompt must be a non-empty text.*--objective mlm"):
        PretrainConfig(preset="bert-tiny", objective="mlm", sample_prompt="def ")
    with pytest.raises(LmforgeError, match="--sample-prompt must be a non-empty text"):
        PretrainConfig(sample_prompt="")


def test_the_closing_lines_quote_the_prompt_and_skip_one_that_is_not_a_line(tmp_path):
    said = closing_lines(tmp_path / "my run", prompt="x = 'a'")
    assert "--model '" + str(tmp_path / "my run") + "' --prompt 'x = '\"'\"'a'\"'\"'' --echo" in said
    assert "loss curve" not in said  # none was drawn there
    assert "--prompt TEXT" in closing_lines(tmp_path, prompt="\n")
    assert "lmforge generate" not in closing_lines(tmp_path, prompt=None, objective="mlm")
