"""Classification data: CSV and JSON Lines, the label map and its JSON, encoding equal to transformers'
tokenizer (pairs as `[CLS] a [SEP] b [SEP]`), and one-line errors."""

import json

import pytest
import tokenizers
import torch

from lmforge.data.tasks import LabelMap, encode_classification, pad_batch, read_classification
from lmforge.errors import LmforgeError

ROWS = [
    ("This movie was great, I loved it.", None, "positive"),
    ("This film was terrible and boring.", None, "negative"),
    ("A fine, pleasant day.", None, "neutral"),
    ("This movie was great", "I loved it", "positive"),
]


def _jsonl(path, rows, text="text", label="label"):
    lines = []
    for a, b, y in rows:
        row = {text: a, label: y}
        if b is not None:
            row["text_pair"] = b
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")  # a trailing blank line is skipped
    return path


def test_csv_and_jsonl_give_the_same_examples(tmp_path):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(
        'review,second,sentiment\n"This movie was great, I loved it.",,positive\nA fine day.,Indeed.,neutral\n',
        encoding="utf-8",
    )
    examples = read_classification(
        csv_path, text_column="review", text_pair_column="second", label_column="sentiment"
    )
    assert [(e.text, e.text_pair, e.label) for e in examples] == [
        ("This movie was great, I loved it.", None, "positive"),
        ("A fine day.", "Indeed.", "neutral"),
    ]
    assert examples[1].where == f"{csv_path}:3"
    jsonl = read_classification(_jsonl(tmp_path / "train.jsonl", ROWS))
    assert [(e.text, e.text_pair, e.label) for e in jsonl] == ROWS
    assert jsonl[3].where == f"{tmp_path / 'train.jsonl'}:4"


def test_label_map_sorted_given_or_numeric_and_its_json(tmp_path):
    examples = read_classification(_jsonl(tmp_path / "train.jsonl", ROWS))
    label_map = LabelMap.from_examples(examples)
    assert label_map.names == ["negative", "neutral", "positive"]
    assert label_map.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert label_map.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    given = LabelMap.from_examples(examples, order=["positive", "negative", "neutral"])
    assert given.label2id["positive"] == 0
    given.save(tmp_path / "labels.json")
    saved = json.loads((tmp_path / "labels.json").read_text())
    assert saved == {
        "id2label": {"0": "positive", "1": "negative", "2": "neutral"},
        "label2id": given.label2id,
    }
    assert LabelMap.load(tmp_path / "labels.json") == given
    # Integer ids (JSON numbers, or digits in a CSV): id i is named "i", and the map covers 0..max.
    numeric = read_classification(_jsonl(tmp_path / "ids.jsonl", [("a", None, 2), ("b", None, 0)]))
    assert LabelMap.from_examples(numeric).names == ["0", "1", "2"]
    csv_path = tmp_path / "ids.csv"
    csv_path.write_text("text,label\na,10\nb,9\n", encoding="utf-8")
    assert len(LabelMap.from_examples(read_classification(csv_path))) == 11
    with pytest.raises(LmforgeError, match=r"labels \['neutral'\] .* not in the given label order"):
        LabelMap.from_examples(examples, order=["positive", "negative"])


def test_encoding_equals_transformers_with_pairs_and_truncation(tmp_path, wordpiece):
    from transformers import PreTrainedTokenizerFast

    examples = read_classification(_jsonl(tmp_path / "train.jsonl", ROWS))
    label_map = LabelMap.from_examples(examples)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer.from_str(wordpiece.backend.to_str()), pad_token="[PAD]"
    )
    for max_length in (6, 12, 64):
        features = encode_classification(wordpiece, examples, label_map, max_length=max_length)
        for example, feature in zip(examples, features):
            args = (example.text,) if example.text_pair is None else (example.text, example.text_pair)
            expected = hf(*args, truncation=True, max_length=max_length, return_token_type_ids=True)
            assert feature["input_ids"] == expected["input_ids"]
            assert feature["token_type_ids"] == expected["token_type_ids"]
            assert feature["attention_mask"] == [1] * len(feature["input_ids"])
            assert feature["labels"] == label_map.label2id[example.label]
    pair = encode_classification(wordpiece, examples[3:], label_map, max_length=64)[0]
    cls, sep = wordpiece.cls_token_id, wordpiece.sep_token_id
    a = wordpiece.encode("This movie was great", add_special_tokens=False)
    b = wordpiece.encode("I loved it", add_special_tokens=False)
    assert pair["input_ids"] == [cls, *a, sep, *b, sep]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    batch = pad_batch(encode_classification(wordpiece, examples, label_map), wordpiece.pad_token_id)
    assert batch["labels"].tolist() == [2, 0, 1, 2]
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape == (4, int(lengths.max()))
    padded = batch["attention_mask"] == 0
    assert bool((batch["input_ids"][padded] == wordpiece.pad_token_id).all()) and bool(padded.any())


def test_a_tokenizer_without_pad_token_encodes_rows_one_by_one(tmp_path, bpe):
    from lmforge.tokenizers import Tokenizer

    no_pad = Tokenizer(bpe.backend, eos_token=bpe.eos_token)
    examples = read_classification(_jsonl(tmp_path / "train.jsonl", ROWS))
    features = encode_classification(no_pad, examples, LabelMap.from_examples(examples), max_length=64)
    assert [f["input_ids"] for f in features[:3]] == [bpe.encode(e.text) for e in examples[:3]]
    with pytest.raises(LmforgeError, match="no pad token"):
        pad_batch(features, None)


def _one_line(call, match):
    with pytest.raises(LmforgeError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_errors_name_the_problem_in_one_line(tmp_path, wordpiece):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("text,sentiment\ngood,positive\n", encoding="utf-8")
    _one_line(
        lambda: read_classification(csv_path),
        rf"^{csv_path}:2 has no column 'label' \(columns: 'text', 'sentiment'\); pass --label-column$",
    )
    _one_line(
        lambda: read_classification(csv_path, label_column="sentiment", text_column="review"), "--text-column"
    )
    train = read_classification(_jsonl(tmp_path / "train.jsonl", ROWS))
    label_map = LabelMap.from_examples(train)
    dev_path = _jsonl(tmp_path / "dev.jsonl", [("good", None, "positive"), ("meh", None, "mixed")])
    dev = read_classification(dev_path)
    _one_line(
        lambda: encode_classification(wordpiece, dev, label_map),
        rf"^{dev_path}:2 has label 'mixed', which the training data does not have "
        r"\(known labels: 'negative', 'neutral', 'positive'\)",
    )
    header_only = tmp_path / "empty.csv"
    header_only.write_text("text,label\n", encoding="utf-8")
    _one_line(lambda: read_classification(header_only), "has no examples")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": \n', encoding="utf-8")
    _one_line(lambda: read_classification(tmp_path / "bad.jsonl"), r"bad.jsonl:2 is not valid JSON")
    (tmp_path / "bool.jsonl").write_text('{"text": "a", "label": true}\n', encoding="utf-8")
    _one_line(lambda: read_classification(tmp_path / "bool.jsonl"), "should be a name or an integer id")
    _one_line(lambda: read_classification(tmp_path / "missing.csv"), "cannot read")
    _one_line(lambda: LabelMap.load(csv_path), "cannot read a label map")
    _one_line(lambda: encode_classification(wordpiece, [], label_map), "dataset is empty")


def test_pad_batch_pads_token_lists_and_stacks_scalars():
    batch = pad_batch(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [5, 6, 7], "start_positions": 1},
            {"input_ids": [8], "attention_mask": [1], "labels": [-100], "start_positions": 0},
        ],
        pad_token_id=0,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [-100, -100, -100]]
    assert batch["start_positions"].tolist() == [1, 0] and batch["start_positions"].dtype == torch.long
    with pytest.raises(LmforgeError, match="empty"):
        pad_batch([], 0)
