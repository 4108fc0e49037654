"""T5-style Unigram tokenizers: trained with sentinels in T5's id layout, loaded back from the Hugging
Face files with their roles inferred, and equal to transformers' tokenizer on the same tokenizer.json."""

import json

import pytest
import transformers

from lmforge.errors import LmforgeError
from lmforge.tokenizers import load_tokenizer, train_tokenizer

CORPUS = [
    "translate English to German: the house is wonderful.",
    "summarize: studies have shown that owning a dog is good for you.",
    "the quick brown fox jumps over the lazy dog, twice!",
] * 40


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(iter(CORPUS), vocab_size=150, kind="unigram", n_sentinels=10)


def test_t5_layout_and_round_trip(tok):
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    sentinels = [tok.token_to_id(f"<extra_id_{i}>") for i in range(10)]
    assert sentinels == list(range(tok.vocab_size - 1, tok.vocab_size - 11, -1))  # counting down, as T5
    assert tok.vocab_size <= 150 and tok.bos_token_id is None
    text = "the house is good for you."
    ids = tok.encode(text)
    assert ids[-1] == tok.eos_token_id  # every input ends with </s>
    assert tok.decode(ids) == text
    # Sentinels are special: literal text never forges one, and decode drops them.
    assert sentinels[0] not in tok.encode("<extra_id_0> the")
    assert tok.encode("<extra_id_0> the", allow_special=True)[0] == sentinels[0]
    assert tok.decode([sentinels[0], *tok.encode("the", add_special_tokens=False)]) == "the"


def test_saved_files_load_with_roles_inferred_and_match_transformers(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    # T5's own folders name the roles and sentinels only in tokenizer_config.json; drop ours.
    (tmp_path / "special_tokens_map.json").unlink()
    config = {
        "eos_token": "</s>",
        "extra_ids": 10,
        "additional_special_tokens": [f"<extra_id_{i}>" for i in range(10)],
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = load_tokenizer(tmp_path)
    assert (loaded.pad_token, loaded.eos_token, loaded.unk_token) == ("<pad>", "</s>", "<unk>")
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in ["summarize: the dog is good.", "Ünïcödé  spaces\tand tabs", "twice!twice"]:
        assert loaded.encode(text) == theirs(text)["input_ids"]
        assert loaded.decode(loaded.encode(text)) == theirs.decode(
            theirs(text)["input_ids"], skip_special_tokens=True
        )


def test_too_small_vocabulary_is_one_clear_error():
    with pytest.raises(LmforgeError, match="vocab-size"):
        train_tokenizer(iter(CORPUS), vocab_size=20, kind="unigram", n_sentinels=16)
