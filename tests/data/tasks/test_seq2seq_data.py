"""Seq2seq data: JSON Lines source/target with a T5 task prefix; labels end with eos whether or not the
tokenizer's post-processor adds it, also after truncation."""

import json

import pytest

from lmforge.data.tasks import encode_seq2seq, pad_batch, read_seq2seq
from lmforge.errors import LmforgeError
from lmforge.train.loss import IGNORE_INDEX, shift_right

ROWS = [
    {
        "document": "The Normans gave their name to Normandy, a region in France.",
        "summary": "Normandy is named after them.",
    },
    {"document": "The sea is blue and wide.", "summary": "The sea."},
]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def test_reading_with_fields_and_a_task_prefix(data_file):
    examples = read_seq2seq(data_file, source_field="document", target_field="summary", prefix="summarize: ")
    assert [(e.source, e.target) for e in examples] == [
        ("summarize: " + r["document"], r["summary"]) for r in ROWS
    ]
    assert examples[1].where == f"{data_file}:2"


def test_t5_tokenizer_appends_eos_itself_and_truncation_keeps_it(data_file, unigram):
    examples = read_seq2seq(data_file, source_field="document", target_field="summary", prefix="summarize: ")
    eos = unigram.eos_token_id
    features = encode_seq2seq(unigram, examples, max_source_length=512, max_target_length=128)
    for example, feature in zip(examples, features):
        assert feature["input_ids"] == unigram.encode(example.source)  # the post-processor's </s> included
        assert feature["input_ids"][-1] == eos and feature["input_ids"].count(eos) == 1
        assert feature["labels"] == unigram.encode(example.target) and feature["labels"][-1] == eos
        assert feature["attention_mask"] == [1] * len(feature["input_ids"])
    short = encode_seq2seq(unigram, examples, max_source_length=6, max_target_length=4)
    for feature, full in zip(short, features):
        assert feature["input_ids"] == full["input_ids"][:5] + [eos]
        assert feature["labels"] == full["labels"][:3] + [eos]
    batch = pad_batch(features, unigram.pad_token_id)
    assert (batch["labels"][1, len(features[1]["labels"]) :] == IGNORE_INDEX).all()
    decoder_input = shift_right(batch["labels"], unigram.pad_token_id, unigram.pad_token_id)
    assert decoder_input[0, 1:].tolist() == features[0]["labels"][:-1]


def test_eos_is_appended_for_tokenizers_that_do_not_add_it(data_file, bpe):
    examples = read_seq2seq(data_file, source_field="document", target_field="summary")
    eos = bpe.eos_token_id
    features = encode_seq2seq(bpe, examples, max_target_length=5)
    long_target = bpe.encode(examples[0].target)
    assert len(long_target) > 5
    assert features[0]["labels"] == long_target[:4] + [eos]
    assert features[1]["labels"] == bpe.encode(examples[1].target) + [eos]
    assert features[0]["input_ids"] == bpe.encode(examples[0].source)


def test_errors(tmp_path, data_file, bpe):
    with pytest.raises(
        LmforgeError,
        match=r"train.jsonl:1 has no field 'source' \(fields: 'document', 'summary'\); pass --source-field",
    ):
        read_seq2seq(data_file)
    with pytest.raises(LmforgeError, match="pass --target-field"):
        read_seq2seq(data_file, source_field="document")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a", "target": 3}\n', encoding="utf-8")
    with pytest.raises(LmforgeError, match=r"bad.jsonl:1: field 'target' is int, not text"):
        read_seq2seq(bad)
    bad.write_text('["a", "b"]\n', encoding="utf-8")
    with pytest.raises(LmforgeError, match="is not a JSON object"):
        read_seq2seq(bad)
    bad.write_text("\n\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="has no examples"):
        read_seq2seq(bad)
    with pytest.raises(LmforgeError, match="dataset is empty"):
        encode_seq2seq(bpe, [])
    examples = read_seq2seq(data_file, source_field="document", target_field="summary")
    with pytest.raises(LmforgeError, match="leaves no room for text"):
        encode_seq2seq(bpe, examples, max_target_length=0)
