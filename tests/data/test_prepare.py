"""`prepare` and its readers: every source format, bad bytes, the split, the written files and manifest."""

import hashlib
import json
import random
import sys
from collections import Counter

import numpy as np
import pytest

from lmforge.data import prepare as prepare_module
from lmforge.data.prepare import PrepareConfig, prepare, validation_mask
from lmforge.data.readers import ReadStats, decode_utf8, read_files
from lmforge.data.tokens import TokenFile, token_dtype
from lmforge.errors import LmforgeError
from lmforge.tokenizers import load_tokenizer

WORDS = ["the", "cat", "sat", "on", "mat", "hello", "world", "你好", "🎉", "über", "data", "token"]


def make_docs(n: int, seed: int = 0, n_words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(n_words)) + rng.choice([".", "!\n", "\n\nend"])
        for _ in range(n)
    ]


def run(tmp_path, data, **kwargs) -> dict:
    kwargs.setdefault("vocab_size", 300)
    return prepare(
        PrepareConfig(data=[str(d) for d in data], out=str(tmp_path / "out"), **kwargs), progress=False
    )


def documents_in(out) -> Counter:
    """The documents of train.bin then val.bin, decoded between EOS ids."""
    tok, docs = load_tokenizer(out), Counter()
    ids = np.concatenate([TokenFile.load(out, split).tokens for split in ("train", "val")]).tolist()
    while tok.eos_token_id in ids:
        cut = ids.index(tok.eos_token_id)
        docs[tok.decode(ids[:cut])] += 1
        ids = ids[cut + 1 :]
    assert not ids, "every document ends with EOS"
    return docs


@pytest.fixture
def text_dir(tmp_path):
    """Five .txt documents in nested directories, and a .md file the default glob leaves out."""
    root = tmp_path / "corpus"
    docs = make_docs(5)
    for i, doc in enumerate(docs):
        path = root / f"part{i % 2}" / "deeper" / f"doc{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc, encoding="utf-8")
    (root / "notes.md").write_text("not part of the corpus", encoding="utf-8")
    return root, docs


def test_text_directory_glob_is_recursive_and_documents_are_separated_by_eos(tmp_path, text_dir):
    root, docs = text_dir
    manifest = run(tmp_path, [root])
    assert documents_in(tmp_path / "out") == Counter(docs)
    assert manifest["train_documents"] + manifest["val_documents"] == 5
    assert manifest["val_documents"] == 1  # 1% of 5 rounds to 0, but validation is never empty


def test_glob_chooses_other_files(tmp_path, text_dir):
    root, _ = text_dir
    manifest = run(tmp_path, [root], glob="*.md")
    assert documents_in(tmp_path / "out") == Counter(["not part of the corpus"])
    assert manifest["train_documents"] == 1


def test_manifest_matches_the_files(tmp_path, text_dir):
    root, _ = text_dir
    manifest = run(tmp_path, [root], seed=7)
    out = tmp_path / "out"
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "lmforge-tokens-v1"
    assert manifest["dtype"] == "uint16"
    for split in ("train", "val"):
        assert (out / f"{split}.bin").stat().st_size == 2 * manifest[f"{split}_tokens"]
    tok = load_tokenizer(out)
    assert manifest["vocab_size"] == tok.vocab_size <= 300
    assert manifest["eos_token_id"] == tok.eos_token_id
    assert manifest["tokenizer_sha256"] == hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    assert manifest["sources"] == [str(root)]
    assert manifest["seed"] == 7
    assert manifest["replaced_bytes"] == 0 and manifest["files_with_replacements"] == []
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_split_is_seeded_and_deterministic(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, doc in enumerate(make_docs(20, seed=1)):
        (corpus / f"{i:02d}.txt").write_text(doc, encoding="utf-8")

    def val_bytes(name, seed):
        prepare(
            PrepareConfig(
                data=[str(corpus)], out=str(tmp_path / name), vocab_size=300, val_fraction=0.2, seed=seed
            ),
            progress=False,
        )
        return (tmp_path / name / "val.bin").read_bytes(), (tmp_path / name / "train.bin").read_bytes()

    assert val_bytes("a", seed=1) == val_bytes("b", seed=1)
    assert val_bytes("a", seed=1) != val_bytes("c", seed=2)
    mask = validation_mask(20, 0.2, seed=1)
    assert mask.sum() == 4 and np.array_equal(mask, validation_mask(20, 0.2, seed=1))
    assert validation_mask(1, 0.2, seed=1).sum() == 0 and validation_mask(2, 0.01, seed=1).sum() == 1


def test_single_document_is_split_at_its_end(tmp_path):
    doc = " ".join(make_docs(30, seed=2))
    (tmp_path / "one.txt").write_text(doc, encoding="utf-8")
    manifest = run(tmp_path, [tmp_path / "one.txt"], val_fraction=0.1)
    assert manifest["train_documents"] == 1 and manifest["val_documents"] == 0
    train, val = (TokenFile.load(tmp_path / "out", s).tokens for s in ("train", "val"))
    total = len(train) + len(val)
    assert len(val) == round(total * 0.1) and val[-1] == manifest["eos_token_id"]
    tok = load_tokenizer(tmp_path / "out")
    assert tok.decode(np.concatenate([train, val])) == doc


def test_long_documents_are_encoded_in_pieces_and_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "_PIECE_CHARS", 50)
    monkeypatch.setattr(prepare_module, "_CHUNK_CHARS", 120)
    docs = make_docs(6, seed=3, n_words=80)
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(doc, encoding="utf-8")
    run(tmp_path, [tmp_path / f"{i}.txt" for i in range(6)])
    assert documents_in(tmp_path / "out") == Counter(docs)


def test_jsonl_field(tmp_path):
    docs = make_docs(4, seed=4)
    lines = [json.dumps({"id": i, "body": d}) for i, d in enumerate(docs)]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    manifest = run(tmp_path, [tmp_path / "docs.jsonl"], jsonl_field="body")
    assert documents_in(tmp_path / "out") == Counter(docs)
    assert manifest["sources"] == [str(tmp_path / "docs.jsonl")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "x"}', "docs.jsonl:2 has no field 'body'"),
        ("{not json", "docs.jsonl:2 is not valid JSON"),
        ("[1, 2]", "docs.jsonl:2 is not a JSON object"),
        ('{"body": 3}', "docs.jsonl:2: field 'body' is int"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, message):
    (tmp_path / "docs.jsonl").write_text('{"body": "fine"}\n' + line + "\n")
    with pytest.raises(LmforgeError, match=message):
        run(tmp_path, [tmp_path / "docs.jsonl"], jsonl_field="body")


def test_parquet_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    docs = make_docs(4, seed=5)
    pq.write_table(pa.table({"id": list(range(4)), "content": docs}), tmp_path / "docs.parquet")
    run(tmp_path, [tmp_path / "docs.parquet"], parquet_column="content")
    assert documents_in(tmp_path / "out") == Counter(docs)
    with pytest.raises(LmforgeError, match="no column 'text'"):
        run(tmp_path, [tmp_path / "docs.parquet"])


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "docs.parquet").write_bytes(b"PAR1")
    with pytest.raises(LmforgeError, match="pip install pyarrow"):
        run(tmp_path, [tmp_path / "docs.parquet"])


def test_dataset_without_datasets_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(LmforgeError, match=r"pip install 'lmforge\[data\]'"):
        prepare(PrepareConfig(out=str(tmp_path / "out"), dataset="some/dataset"), progress=False)


def test_invalid_utf8_is_replaced_and_counted(tmp_path, text_dir, capsys):
    root, _ = text_dir
    bad = root / "bad.txt"
    # Four invalid sequences (ff, fe, a lone e2 lead byte, a stray a1), and one valid encoded U+FFFD.
    bad.write_bytes(b"bad \xff\xfe bytes \xe2(\xa1 ok \xef\xbf\xbd\n")
    manifest = run(tmp_path, [root])
    assert manifest["replaced_bytes"] == 4
    assert manifest["files_with_replacements"] == [str(bad)]
    assert "bad \ufffd\ufffd bytes \ufffd(\ufffd ok \ufffd\n" in documents_in(tmp_path / "out")
    assert "replaced 4 invalid UTF-8 byte sequences" in capsys.readouterr().err
    assert decode_utf8("ok \ufffd".encode()) == ("ok \ufffd", 0)


def test_byte_order_marks_are_dropped(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfhello")
    (tmp_path / "b.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "world"}\n')
    assert list(read_files([tmp_path / "a.txt", tmp_path / "b.jsonl"])) == ["hello", "world"]


def test_replacements_are_counted_per_file(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_bytes(b'{"text": "x\xff"}\n{"text": "y\xff\xff"}\n')
    stats = ReadStats()
    docs = list(read_files([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], stats=stats))
    assert docs == ["x\ufffd", "y\ufffd\ufffd"] * 2
    assert (stats.replaced_bytes, stats.files_with_replacements, stats.documents) == (6, 2, 4)


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("")
    (tmp_path / "corpus" / "b.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(LmforgeError, match="the corpus is empty"):
        run(tmp_path, [tmp_path / "corpus"], glob="*")


def test_directory_without_matching_files_is_an_error(tmp_path, text_dir):
    root, _ = text_dir
    with pytest.raises(LmforgeError, match=r"no files matching '\*\.csv'.*--glob"):
        run(tmp_path, [root], glob="*.csv")


def test_token_dtype():
    assert token_dtype(300) == np.dtype("<u2") and token_dtype(65536) == np.dtype("<u2")
    assert token_dtype(65537) == np.dtype("<u4") and token_dtype(200_000).name == "uint32"
    assert token_dtype(300).byteorder in ("<", "=") and token_dtype(300).str == "<u2"


def test_existing_tokenizer_is_used_without_training(tmp_path, text_dir, monkeypatch):
    root, docs = text_dir
    first = run(tmp_path, [root])
    given = tmp_path / "tokenizer"
    load_tokenizer(tmp_path / "out").save_pretrained(given)

    def no_training(*args, **kwargs):
        raise AssertionError("a given tokenizer must not be retrained")

    monkeypatch.setattr(prepare_module, "train_tokenizer", no_training)
    second = prepare(
        PrepareConfig(data=[str(root)], out=str(tmp_path / "out2"), tokenizer=str(given)), progress=False
    )
    assert second["tokenizer_sha256"] == first["tokenizer_sha256"]
    assert (tmp_path / "out2" / "train.bin").read_bytes() == (tmp_path / "out" / "train.bin").read_bytes()
    assert documents_in(tmp_path / "out2") == Counter(docs)


def test_builtin_corpus_when_no_data(tmp_path, monkeypatch):
    files = []
    for i, doc in enumerate(make_docs(3, seed=6)):
        files.append(tmp_path / "stdlib" / f"m{i}.py")
        files[-1].parent.mkdir(exist_ok=True)
        files[-1].write_text(doc, encoding="utf-8")
    monkeypatch.setattr(prepare_module, "builtin_corpus_files", lambda: files)
    manifest = run(tmp_path, [])
    assert manifest["sources"] == [str(tmp_path / "stdlib")]
    assert manifest["train_documents"] + manifest["val_documents"] == 3


def test_failed_prepare_keeps_the_earlier_output(tmp_path, text_dir, monkeypatch):
    root, _ = text_dir
    run(tmp_path, [root])
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # Failing while reading (first pass) ...
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(LmforgeError, match=r"bad\.jsonl:2"):
        run(tmp_path, [tmp_path / "bad.jsonl"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # ... and while writing tokens (second pass), after some were written.
    encode_chunk = prepare_module._encode_chunk

    def encode_then_fail(*args):
        encode_chunk(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_encode_chunk", encode_then_fail)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, [root], seed=99)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_unwritable_out_names_the_path(tmp_path, text_dir):
    root, _ = text_dir
    (tmp_path / "file").write_text("a regular file")
    out = tmp_path / "file" / "out"
    with pytest.raises(LmforgeError, match=f"cannot write to {out}"):
        prepare(PrepareConfig(data=[str(root)], out=str(out), vocab_size=300), progress=False)


@pytest.mark.parametrize("bad", [{"val_fraction": 0.0}, {"val_fraction": 0.5}, {"workers": 0}, {"out": ""}])
def test_bad_options_are_errors(tmp_path, text_dir, bad):
    root, _ = text_dir
    config = PrepareConfig(data=[str(root)], out=str(tmp_path / "out"), vocab_size=300)
    for key, value in bad.items():
        setattr(config, key, value)
    with pytest.raises(LmforgeError):
        prepare(config, progress=False)


def test_too_small_vocabulary_is_reported_by_training(tmp_path, text_dir):
    root, _ = text_dir
    with pytest.raises(LmforgeError, match="vocabulary size 10 is too small"):
        run(tmp_path, [root], vocab_size=10)
