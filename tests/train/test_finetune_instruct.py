"""`lmforge finetune --task instruct`: the loss ignores prompt tokens, and a tiny GPT-2 learns to answer
instructions (a real subprocess on a small Alpaca file); evaluate, LoRA and bad input."""

import json
import random

import pytest
import torch
from lmforge_cli import assert_one_line_error, finetune_under_bf16, run_lmforge

import lmforge
from lmforge.data.tasks import Conversation, encode_conversation, ensure_chat_template
from lmforge.models import build_model, get_preset
from lmforge.tokenizers import train_tokenizer
from lmforge.train.finetune import FinetuneConfig
from lmforge.train.loss import IGNORE_INDEX
from lmforge.train.tasks.instruct import InstructTask

CAPITALS = {"france": "paris", "italy": "rome", "spain": "madrid", "japan": "tokyo", "egypt": "cairo"}
ASKS = ["Name the capital.", "What is the capital city?", "Give the capital of this country."]


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        country = rng.choice(sorted(CAPITALS))
        rows.append({"instruction": rng.choice(ASKS), "input": country, "output": CAPITALS[country]})
    return rows


def _write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("instruct")
    corpus = root / "corpus.txt"
    corpus.write_text(" ".join(ASKS + list(CAPITALS) + list(CAPITALS.values())) + " <|user|> <|assistant|>\n")
    tok = train_tokenizer([corpus], vocab_size=300, kind="bpe")
    base = root / "base"
    torch.manual_seed(0)
    build_model(get_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=96)).save_pretrained(base)
    tok.save_pretrained(base)
    data = root / "data"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", _rows(200, seed=1))
    _write_jsonl(data / "validation.jsonl", _rows(20, seed=2))
    return root, base, data


def test_the_loss_ignores_prompt_tokens(setup):
    """Only reply positions carry labels; the loss's gradient on every prompt position's logits is zero."""
    _, base, _ = setup
    tok = lmforge.load_tokenizer(base)
    ensure_chat_template(tok)
    task = InstructTask(FinetuneConfig(model=str(base), task="instruct"))
    conversation = Conversation(
        (
            {"role": "user", "content": "Name the capital.\n\nfrance"},
            {"role": "assistant", "content": "paris"},
        )
    )
    (row,) = task.encode(tok, [conversation], training=True)
    reply = tok.encode("paris", add_special_tokens=False) + [tok.eos_token_id]
    labelled = [i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX]
    assert [row["labels"][i] for i in labelled] == reply  # the reply and its eos, nothing else
    assert labelled == list(range(len(row["labels"]) - len(reply), len(row["labels"])))
    full_ids, full_labels = encode_conversation(tok, conversation)  # next-token rows: shifted by one
    assert row["input_ids"] == full_ids[:-1] and row["labels"] == full_labels[1:]

    batch = {k: torch.tensor([v]) for k, v in row.items()}
    logits = torch.randn(1, len(row["input_ids"]), tok.vocab_size, requires_grad=True)
    loss, count = task.loss(lambda ids, attention_mask=None: logits, batch)
    loss.backward()
    assert count.item() == len(reply)
    per_position = logits.grad[0].abs().sum(-1)
    prompt = [i for i in range(len(row["labels"])) if i not in labelled]
    assert per_position[prompt].eq(0).all() and per_position[labelled].gt(0).all()
    # The loss is the summed cross-entropy of the reply tokens alone.
    expected = torch.nn.functional.cross_entropy(logits[0, labelled], torch.tensor(reply), reduction="sum")
    torch.testing.assert_close(loss, expected)


FLAGS = ("--max-steps", 80, "--batch-size", 16, "--lr", 3e-3, "--warmup-steps", 5, "--eval-every", 40)
FLAGS += (
    "--max-length",
    64,
    "--max-target-length",
    8,
    "--no-progress",
    "--device",
    "cpu",
    "--metric",
    "rougeL",
)


@pytest.fixture(scope="module")
def trained(setup):
    root, base, data = setup
    out = root / "run"
    result = run_lmforge(
        "finetune", "--task", "instruct", "--model", base, "--data", data, "--out", out, *FLAGS
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_instruction_tuning_beats_copying_the_input(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    print(f"rougeL {metrics['rougeL']:.4f} (copying the input: 0.0)")
    assert metrics["rougeL"] > 0.9  # the five capitals; copying the country scores 0
    assert json.loads((trained / "best" / "metrics.json").read_text())["rougeL"] >= metrics["rougeL"]
    assert "<|assistant|>" in lmforge.load_tokenizer(trained).chat_template  # saved with the model


@pytest.mark.slow
def test_generate_chat_answers_a_new_instruction(trained, setup):
    """`generate --chat` writes the prompt with the saved template: the tuned model answers it."""
    prompt = "Name the capital.\n\nitaly"  # an Alpaca row's instruction and input, as training joined them
    result = run_lmforge("generate", "--model", trained, "--chat", "--prompt", prompt, "--temperature", 0)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "rome"
    # Without a chat template there is nothing to write the prompt with: one line, exit 2.
    assert_one_line_error(
        run_lmforge("generate", "--model", setup[1], "--chat", "--prompt", prompt),
        "no chat template",
        "--task instruct",
    )


@pytest.mark.slow
def test_evaluate_reproduces_the_validation_metrics(trained, setup):
    root, _, data = setup
    result = run_lmforge(
        "evaluate", "--task", "instruct", "--model", trained, "--data", data / "validation.jsonl",
        "--max-target-length", 8, "--out", root / "eval.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((root / "eval.json").read_text()) == json.loads((trained / "metrics.json").read_text())


@pytest.mark.slow
def test_lora_trains_fused_gpt2_attention_and_saves_a_peft_adapter(setup):
    root, base, data = setup
    out = root / "lora"
    flags = (
        "--max-steps",
        4,
        "--eval-every",
        2,
        "--batch-size",
        8,
        "--max-length",
        64,
        "--max-target-length",
        4,
    )
    flags += ("--max-eval-examples", 4)
    result = run_lmforge(
        "finetune", "--task", "instruct", "--model", base, "--data", data, "--out", out, "--method", "lora",
        "--lora-targets", "q_proj,v_proj", "--no-progress", "--device", "cpu", *flags,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "LoRA on q_proj, v_proj, k_proj" in result.stdout
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["c_attn"] and config["fan_in_fan_out"]
    merged = lmforge.load_model(out)  # the merged model opens as a plain GPT-2
    assert merged.config.model_type == "gpt2"


@pytest.mark.slow
def test_bad_inputs_exit_2_with_one_line(setup):
    root, base, data = setup
    run = ("finetune", "--task", "instruct", "--model", base, "--no-progress")
    empty = root / "empty.jsonl"
    empty.write_text("")
    assert_one_line_error(run_lmforge(*run, "--data", empty, "--out", root / "e"), "no examples")
    no_reply = root / "noreply.jsonl"
    _write_jsonl(no_reply, [{"messages": [{"role": "user", "content": "hi"}]}])
    assert_one_line_error(
        run_lmforge(*run, "--data", no_reply, "--validation", no_reply, "--out", root / "n"),
        "no assistant message",
    )
    bert = root / "bert"
    build_model(get_preset("bert-tiny", vocab_size=300)).save_pretrained(bert)
    lmforge.load_tokenizer(base).save_pretrained(bert)
    assert_one_line_error(
        run_lmforge(*run, "--model", bert, "--data", data, "--out", root / "b"), "bert", "GPT-2"
    )
    assert_one_line_error(
        run_lmforge(*run, "--data", data, "--out", root / "m", "--metric", "accuracy"), "accuracy"
    )


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_few_steps_under_bf16_autocast(setup, method):
    """bf16 autocast on any CPU: training, validation scoring and the saved model."""
    root, base, data = setup
    metrics = finetune_under_bf16("instruct", base, data, root / f"bf16-{method}", method)
    assert metrics["rougeL"] >= 0
