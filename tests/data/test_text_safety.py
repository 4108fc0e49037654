"""Damaged text at every entry: invalid UTF-8 bytes and lone surrogates become U+FFFD, are counted, and are
reported on stderr in one line per input; nothing crashes.

The command-line cases run `python -m lmforge` as a user does, with raw bytes in argv, stdin and files.
"""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from lmforge.data.readers import ReadStats, jsonl_objects, read_files
from lmforge.data.tasks import read_classification, read_seq2seq, read_squad
from lmforge.data.tasks.instruct import read_instructions
from lmforge.models import build_model, get_preset
from lmforge.text import clean_input, clean_json, clean_text
from lmforge.tokenizers import train_tokenizer

TEXT = "the cat sat on the mat. the dog sat on the log. a cat and a dog.\n" * 20
REPORT = "invalid UTF-8 byte sequence"


def lmforge_bytes(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """`python -m lmforge` with arguments passed as bytes, so that argv can hold invalid UTF-8."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    argv = [a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", *argv], input=stdin, capture_output=True, env=env, timeout=300
    )
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr
    return result


def report_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.decode("utf-8", "replace").splitlines() if REPORT in line]


# --- the one function -------------------------------------------------------------------------------


def test_clean_text_replaces_and_counts_bytes_and_surrogates():
    assert clean_text(b"caf\xe9 \xff ok \xef\xbf\xbd") == ("caf\ufffd \ufffd ok \ufffd", 2)
    argv = b"caf\xe9 cr\xe8me".decode("utf-8", "surrogateescape")  # how Python hands invalid argv bytes over
    assert clean_text(argv) == ("caf\ufffd cr\ufffdme", 2)
    assert clean_text("a\ud800b\udfffc") == ("a\ufffdb\ufffdc", 2)
    text = "clean 🎉 text"
    assert clean_text(text)[0] is text and clean_text(text)[1] == 0
    assert clean_json({"k\ud800": ["x\udc80", {"y": "\ud801"}], "n": 1}) == (
        {"k\ufffd": ["x\ufffd", {"y": "\ufffd"}], "n": 1},
        3,
    )


def test_clean_input_reports_once(capsys):
    assert clean_input("a\udcffb\udcfe", "--prompt") == "a\ufffdb\ufffd"
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "lmforge: replaced 2 invalid UTF-8 byte sequences or lone surrogates with U+FFFD in --prompt"
    ]
    assert clean_input("fine", "--prompt") == "fine" and capsys.readouterr().err == ""


# --- files: JSON Lines, CSV, SQuAD JSON ---------------------------------------------------------------


def test_jsonl_surrogate_escapes_and_bytes_are_replaced_and_counted(tmp_path, capsys):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b'{"text": "lone \\ud800 surrogate"}\n{"text": "bad \xff byte", "meta": ["\\udfff"]}\n')
    stats = ReadStats()
    assert list(read_files([path], stats=stats)) == ["lone \ufffd surrogate", "bad \ufffd byte"]
    assert (stats.replaced_bytes, stats.listed_files) == (3, [str(path)])
    # Without a ReadStats of the caller's, the reader reports itself, once, after the file.
    rows = [row for _, row in jsonl_objects(path)]
    assert rows[1]["meta"] == ["\ufffd"]
    assert capsys.readouterr().err.count(REPORT) == 1


def test_task_readers_clean_their_files(tmp_path, capsys):
    seq2seq = tmp_path / "s.jsonl"
    seq2seq.write_bytes(b'{"source": "a \\ud83d b", "target": "c \xfe d"}\n')
    assert [(e.source, e.target) for e in read_seq2seq(seq2seq)] == [("a \ufffd b", "c \ufffd d")]
    chat = tmp_path / "chat.jsonl"
    turns = b'[{"role": "user", "content": "hi \\udc00"}, {"role": "assistant", "content": "yo \xc3("}]'
    chat.write_bytes(b'{"messages": ' + turns + b"}\n")
    assert [m["content"] for m in read_instructions(chat)[0].messages] == ["hi \ufffd", "yo \ufffd("]
    table = tmp_path / "c.csv"
    table.write_bytes(b"text,label\ncaf\xe9 au lait,drink\n")
    assert [(e.text, e.label) for e in read_classification(table)] == [("caf\ufffd au lait", "drink")]
    squad = tmp_path / "squad.json"
    qa = {"id": "q1", "question": "where?", "answers": [{"text": "France", "answer_start": 14}]}
    paragraph = {"context": "Paris @ is in France #.", "qas": [qa]}
    document = json.dumps({"data": [{"paragraphs": [paragraph]}]}).encode()
    squad.write_bytes(b"\xef\xbb\xbf" + document.replace(b"@", b"\\ud800").replace(b"#", b"\xff"))
    (example,) = read_squad(squad)
    assert example.context == "Paris \ufffd is in France \ufffd." and example.answers[0].text == "France"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(REPORT in line for line in err), err
    for path in (seq2seq, chat, table, squad):
        assert sum(str(path) in line for line in err) == 1
    from lmforge.data.tasks import read_questions

    (question,) = read_questions(squad)  # `answer --input` recognises the SQuAD file all the same
    assert question.context == example.context


# --- the command line: argv, stdin, files --------------------------------------------------------------


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """A tiny random GPT-2 with a byte-level BPE tokenizer."""
    out = tmp_path_factory.mktemp("decoder")
    tok = train_tokenizer(iter([TEXT]), vocab_size=300)
    torch.manual_seed(0)
    build_model(get_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_generate_with_invalid_bytes_in_argv_and_stdin(decoder):
    common = ["generate", "--model", decoder, "--max-new-tokens", 4, "--temperature", 0, "--echo"]
    result = lmforge_bytes(*common, "--prompt", b"caf\xe9 cr\xe8me", "--stop", b"\xff")
    assert result.stdout.startswith("caf\ufffd cr\ufffdme".encode())
    assert report_lines(result) == [
        "lmforge: replaced 2 invalid UTF-8 byte sequences or lone surrogates with U+FFFD in --prompt",
        "lmforge: replaced 1 invalid UTF-8 byte sequence or lone surrogate with U+FFFD in --stop",
    ]
    result = lmforge_bytes(*common, "--prompt", "-", stdin=b"the \xf0\x9f cat")
    assert result.stdout.startswith("the \ufffd cat".encode())
    assert report_lines(result) == [
        "lmforge: replaced 1 invalid UTF-8 byte sequence or lone surrogate with U+FFFD in standard input"
    ]


@pytest.mark.slow
def test_prepare_and_tokenizer_train_on_damaged_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_bytes(
        b"".join(json.dumps({"text": line}).encode() + b"\n" for line in TEXT.splitlines())
        + b'{"text": "lone \\ud800 surrogate and a bad \xff byte"}\n'
    )
    result = lmforge_bytes(
        "prepare", "--data", corpus, "--glob", "*.jsonl", "--out", tmp_path / "out", "--vocab-size", 300
    )
    (line,) = report_lines(result)
    assert line.startswith("lmforge: replaced 2 invalid") and "a.jsonl" in line
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["replaced_bytes"] == 2
    (corpus / "b.txt").write_bytes(TEXT.encode() + b"caf\xe9 cr\xe8me\n")
    result = lmforge_bytes(
        "tokenizer", "train", "--data", corpus / "b.txt", "--vocab-size", 300, "--out", tmp_path / "tok"
    )
    (line,) = report_lines(result)
    assert line.startswith("lmforge: replaced 2 invalid") and "b.txt" in line


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny random BERT with a WordPiece tokenizer, and a CSV of labelled texts with invalid bytes."""
    root = tmp_path_factory.mktemp("encoder")
    tok = train_tokenizer(iter([TEXT]), vocab_size=120, kind="wordpiece")
    torch.manual_seed(0)
    config = get_preset(
        "bert-tiny", vocab_size=128, n_layers=1, pad_token_id=tok.pad_token_id, max_seq_len=32
    )
    build_model(config).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    data = root / "data"
    data.mkdir()
    for name in ("train.csv", "validation.csv"):
        with open(data / name, "w", newline="", encoding="utf-8") as f:
            rows = [{"text": f"the {animal} sat", "label": animal} for animal in ("cat", "dog") * 4]
            csv.DictWriter(f, fieldnames=["text", "label"]).writeheader()
            csv.DictWriter(f, fieldnames=["text", "label"]).writerows(rows)
        with open(data / name, "ab") as f:
            f.write(b"the caf\xe9 cat,cat\n")
    return root


@pytest.mark.slow
def test_finetune_classify_embed_and_search_with_invalid_bytes(encoder, tmp_path):
    base, data = encoder / "base", encoder / "data"
    result = lmforge_bytes(
        "finetune", "--task", "classification", "--model", base, "--data", data, "--out", tmp_path / "run",
        "--max-steps", 1, "--batch-size", 4, "--max-length", 16, "--no-progress", "--device", "cpu",
    )  # fmt: skip
    reported = report_lines(result)
    assert any("train.csv" in line for line in reported), reported
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"the cat sat\nthe d\xf6g sat\n")
    result = lmforge_bytes("classify", "--model", tmp_path / "run", "--input", lines)
    assert len(result.stdout.splitlines()) == 2
    assert len(report_lines(result)) == 1 and "lines.txt" in report_lines(result)[0]
    result = lmforge_bytes("embed", "--model", base, "--input", lines, "--out", tmp_path / "v.npy")
    assert (tmp_path / "v.npy").is_file() and len(report_lines(result)) == 1
    result = lmforge_bytes("search", "--model", base, "--corpus", lines, "--query", b"c\xe0t", "--top-k", 1)
    assert [line.rsplit(" in ", 1)[1] for line in report_lines(result)] == [str(lines), "--query"]
