"""SQuAD v1.1/v2.0: reading, windows equal to transformers' fast tokenizer, answers mapped through
offsets exactly, unanswerable questions, post-processing back to text, and one-line errors."""

import itertools
import json

import pytest
import tokenizers
import torch

from lmforge.data.tasks import (
    pad_batch,
    postprocess_squad,
    prepare_squad_eval,
    prepare_squad_train,
    read_squad,
)
from lmforge.errors import LmforgeError

MAX_LENGTH, STRIDE = 64, 16
# About 170 tokens: several windows of 64. The tokenizers of conftest.py are trained on this text.
LONG = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
    "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under "
    "their leader Rollo, agreed to swear fealty to King Charles III of West Francia. Through generations of "
    "assimilation and mixing with the native Frankish and Roman-Gaulish populations, their descendants would "
    "gradually merge with the Carolingian-based cultures of West Francia. The distinct cultural and ethnic "
    "identity of the Normans emerged initially in the first half of the 10th century, and it continued to "
    "evolve over the succeeding centuries. Computational complexity theory is a branch of the theory of "
    "computation in theoretical computer science that focuses on classifying computational problems according "
    "to their inherent difficulty."
)
SHORT = "This movie was great, I loved it."


def _qa(qid, question, context, answers, is_impossible=False):
    starts = [context.index(a) for a in answers]
    qa = {
        "id": qid,
        "question": question,
        "answers": [{"text": a, "answer_start": s} for a, s in zip(answers, starts)],
    }
    if is_impossible:
        qa["is_impossible"] = True
    return qa


def _squad_v2():
    long_qas = [
        _qa("q-region", "What region was named after them?", LONG, ["Normandy"]),
        _qa("q-leader", "Who was the leader of the raiders?", LONG, ["Rollo"]),
        _qa(
            "q-when",
            "When did the identity emerge?",
            LONG,
            ["the first half of the 10th century", "10th century"],
        ),
        _qa("q-branch", "What is complexity theory a branch of?", LONG, ["the theory of computation"]),
        _qa("q-capital", "What is the capital of France?", LONG, [], is_impossible=True),
    ]
    short_qas = [_qa("q-movie", "  What was great?", SHORT, ["This movie"])]
    return {
        "version": "v2.0",
        "data": [
            {"title": "Normans", "paragraphs": [{"context": LONG, "qas": long_qas}]},
            {"title": "Movies", "paragraphs": [{"context": SHORT, "qas": short_qas}]},
        ],
    }


@pytest.fixture
def squad_file(tmp_path):
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(_squad_v2()), encoding="utf-8")
    return path


def test_reading_the_nested_format(squad_file):
    examples = read_squad(squad_file)
    assert [e.id for e in examples] == ["q-region", "q-leader", "q-when", "q-branch", "q-capital", "q-movie"]
    assert examples[4].is_impossible and examples[4].answers == ()
    assert [a.text for a in examples[2].answers] == ["the first half of the 10th century", "10th century"]
    assert examples[5].question == "What was great?"  # leading spaces stripped, as run_qa
    for example in examples:
        for answer in example.answers:
            assert example.context[answer.start : answer.start + len(answer.text)] == answer.text


def test_windows_equal_transformers_fast_tokenizer(wordpiece, squad_file):
    from transformers import PreTrainedTokenizerFast

    examples = read_squad(squad_file)
    features, windows = prepare_squad_eval(wordpiece, examples, max_length=MAX_LENGTH, stride=STRIDE)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer.from_str(wordpiece.backend.to_str()),
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
    )
    reference = hf(
        [e.question for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=MAX_LENGTH,
        stride=STRIDE,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
    )
    assert [f["input_ids"] for f in features] == reference["input_ids"]
    assert [f["token_type_ids"] for f in features] == reference["token_type_ids"]
    assert [w.example_index for w in windows] == reference["overflow_to_sample_mapping"]
    for i, window in enumerate(windows):
        expected = [
            tuple(o) if s == 1 else None
            for o, s in zip(reference["offset_mapping"][i], reference.sequence_ids(i))
        ]
        assert window.offsets == expected
    # The long context needs several windows; consecutive windows share STRIDE context tokens.
    long_windows = [f["input_ids"] for f, w in zip(features, windows) if w.example_index == 0]
    assert len(long_windows) >= 3 and all(len(ids) <= MAX_LENGTH for ids in long_windows)
    n_question = long_windows[0].index(wordpiece.sep_token_id) + 1
    for a, b in itertools.pairwise(long_windows):
        assert a[n_question:-1][-STRIDE:] == b[n_question : n_question + STRIDE]


def test_answers_map_to_token_spans_through_offsets(wordpiece, squad_file):
    examples = read_squad(squad_file)
    features = prepare_squad_train(wordpiece, examples, max_length=MAX_LENGTH, stride=STRIDE)
    _, windows = prepare_squad_eval(wordpiece, examples, max_length=MAX_LENGTH, stride=STRIDE)
    assert len(features) == len(windows)
    labelled = {e.id: 0 for e in examples}
    for feature, window in zip(features, windows):
        example = examples[window.example_index]
        start, end = feature["start_positions"], feature["end_positions"]
        context_offsets = [o for o in window.offsets if o is not None]
        if example.is_impossible:
            assert (start, end) == (0, 0)
            continue
        answer = example.answers[0]  # training uses the first answer
        inside = (
            context_offsets[0][0] <= answer.start
            and answer.start + len(answer.text) <= context_offsets[-1][1]
        )
        if not inside:
            assert (start, end) == (0, 0)
            continue
        # The labelled span, read back through the offsets, is exactly the answer.
        assert example.context[window.offsets[start][0] : window.offsets[end][1]] == answer.text
        assert wordpiece.decode(feature["input_ids"][start : end + 1]) == answer.text.lower()
        labelled[example.id] += 1
    assert labelled["q-capital"] == 0
    assert all(n >= 1 for qid, n in labelled.items() if qid != "q-capital")
    assert sum(n == 0 for n in labelled.values()) == 1 and len(features) > len(examples)
    batch = pad_batch(features, wordpiece.pad_token_id)
    assert batch["input_ids"].shape == (len(features), MAX_LENGTH) and batch["start_positions"].shape == (
        len(features),
    )


def _logits_pointing_at(features, windows, examples, spans):
    """Start/end logits (n_windows, T) peaking at the given token spans, by example id; the no-answer
    position 0 scores 2 + 2 everywhere."""
    width = max(len(f["input_ids"]) for f in features)
    starts, ends = torch.zeros(len(features), width), torch.zeros(len(features), width)
    starts[:, 0] = ends[:, 0] = 2.0
    for i, window in enumerate(windows):
        span = spans.get((examples[window.example_index].id, i))
        if span is not None:
            starts[i, span[0]], ends[i, span[1]] = span[2], span[2]
    return starts, ends


def test_postprocessing_maps_the_best_span_back_to_text(wordpiece, squad_file):
    examples = read_squad(squad_file)
    train = prepare_squad_train(wordpiece, examples, max_length=MAX_LENGTH, stride=STRIDE)
    features, windows = prepare_squad_eval(wordpiece, examples, max_length=MAX_LENGTH, stride=STRIDE)
    spans = {}
    for i, (f, w) in enumerate(zip(train, windows)):
        if f["start_positions"] and (examples[w.example_index].id, None) not in spans:
            spans[(examples[w.example_index].id, i)] = (f["start_positions"], f["end_positions"], 9.0)
            spans[(examples[w.example_index].id, None)] = True
    # The unanswerable question: a weak span (1 + 1) in its first window, beaten by no-answer (2 + 2).
    first = next(i for i, w in enumerate(windows) if examples[w.example_index].id == "q-capital")
    spans[("q-capital", first)] = (20, 21, 1.0)
    starts, ends = _logits_pointing_at(features, windows, examples, spans)
    v2 = postprocess_squad(examples, windows, starts, ends, null_threshold=0.0)
    expected = {e.id: e.answers[0].text if e.answers else "" for e in examples}
    assert v2 == expected
    # v1.1 (no threshold) always answers; a threshold above the gap (4 - 2) answers too.
    weak = examples[4].context[windows[first].offsets[20][0] : windows[first].offsets[21][1]]
    assert postprocess_squad(examples, windows, starts, ends)["q-capital"] == weak
    assert (
        postprocess_squad(examples, windows, starts.tolist(), ends.numpy(), null_threshold=2.5)["q-capital"]
        == weak
    )
    # A span longer than max_answer_length is never chosen.
    assert (
        postprocess_squad(examples, windows, starts, ends, max_answer_length=1)["q-branch"]
        != expected["q-branch"]
    )


def _write(tmp_path, data):
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _one_line_error(path, match):
    with pytest.raises(LmforgeError, match=match) as info:
        read_squad(path)
    assert "\n" not in str(info.value)


def test_an_answer_not_in_its_context_names_the_question_and_offset(tmp_path):
    data = _squad_v2()
    data["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 3
    path = _write(tmp_path, data)
    _one_line_error(
        path, r"^answer 'This movie' of question q-movie is not in its context at 3; fix answer_start$"
    )


def test_malformed_and_empty_files_are_one_line_errors(tmp_path, wordpiece):
    _one_line_error(_write(tmp_path, '{"data": [{"paragraphs": ['), r"is not valid JSON")
    _one_line_error(_write(tmp_path, {"version": "v2.0", "data": []}), r"has no questions")
    _one_line_error(_write(tmp_path, {"questions": []}), r"has no 'data' list")
    _one_line_error(
        _write(tmp_path, {"data": [{"paragraphs": [{"qas": []}]}]}), r"paragraphs\[0\] has no 'context'"
    )
    no_answer = {
        "data": [{"paragraphs": [{"context": SHORT, "qas": [{"id": "x", "question": "?", "answers": []}]}]}]
    }
    _one_line_error(
        _write(tmp_path, no_answer), r"question x .* has no answers; give one or set is_impossible"
    )
    _one_line_error(tmp_path / "missing.json", r"cannot read")
    with pytest.raises(LmforgeError, match="dataset is empty"):
        prepare_squad_train(wordpiece, [])


def test_a_question_that_fills_the_window_is_an_error(tmp_path, wordpiece):
    path = _write(
        tmp_path,
        {"data": [{"paragraphs": [{"context": SHORT, "qas": [_qa("long", "what " * 60, SHORT, ["it"])]}]}]},
    )
    with pytest.raises(
        LmforgeError, match=r"question long has 60 tokens, too many .* pass a larger --max-length"
    ):
        prepare_squad_train(wordpiece, read_squad(path), max_length=MAX_LENGTH, stride=STRIDE)


def test_byte_level_bpe_offsets_also_map_answers(bpe, squad_file):
    examples = read_squad(squad_file)
    features = prepare_squad_train(bpe, examples, max_length=MAX_LENGTH, stride=STRIDE)
    _, windows = prepare_squad_eval(bpe, examples, max_length=MAX_LENGTH, stride=STRIDE)
    found = set()
    for feature, window in zip(features, windows):
        if feature["start_positions"]:
            example = examples[window.example_index]
            text = example.context[
                window.offsets[feature["start_positions"]][0] : window.offsets[feature["end_positions"]][1]
            ]
            # Byte-level tokens carry their leading space: the span is the answer, give or take it.
            assert text.strip() == example.answers[0].text
            found.add(example.id)
    assert found == {"q-region", "q-leader", "q-when", "q-branch", "q-movie"}
