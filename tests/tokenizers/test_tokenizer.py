"""Tokenizer training, loading and saving: round trips, parity with `tokenizers` and `transformers`."""

import json
import random

import pytest
import tokenizers
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import processors

from lmforge.errors import LmforgeError
from lmforge.tokenizers import Tokenizer, load_tokenizer, train_tokenizer

EOT = "<|endoftext|>"
TEXTS = [
    "Hello, world! The quick brown fox.",
    "  leading spaces\tand tabs\n\nnew lines  ",
    "中文混合 English 和 emoji 🎉🦀 ok",
    "numbers 12345 and symbols #@$%^&*()",
    "",
]


def make_corpus(seed: int = 0, n_words: int = 2000) -> str:
    """A few KB of mixed English, Chinese, emoji and whitespace."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "mat", "hello", "world", "你好", "世界", "学习", "🎉", "🦀", "é", "ü"]
    seps = [" ", " ", " ", "\n", ", ", ". "]
    return "".join(rng.choice(words) + rng.choice(seps) for _ in range(n_words))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    tok = train_tokenizer([path], vocab_size=400)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    return tok


@pytest.fixture(scope="module")
def bpe_dir(bpe, tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    bpe.save_pretrained(out)
    return out


@settings(deadline=None)
@given(st.text())
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(deadline=None)
@given(st.text(max_size=20), st.text(max_size=20))
def test_special_token_text_is_plain_unless_allowed(bpe, before, after):
    text = before + EOT + after
    ids = bpe.encode(text)
    assert bpe.eos_token_id not in ids
    assert bpe.decode(ids) == text
    allowed = bpe.encode(text, allow_special=True)
    assert bpe.eos_token_id in allowed
    assert bpe.decode(allowed, skip_special_tokens=False) == text


def test_trained_bpe_roles(bpe):
    assert bpe.bos_token == bpe.eos_token == bpe.pad_token == EOT
    assert bpe.eos_token_id == bpe.token_to_id(EOT) == 0
    assert bpe.all_special_ids == [0]
    assert bpe.id_to_token(0) == EOT
    assert len(bpe) == bpe.vocab_size <= 400


def test_ids_match_tokenizers_library(bpe_dir):
    ours = load_tokenizer(bpe_dir)
    library = tokenizers.Tokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    for text in TEXTS:
        assert ours.encode(text) == library.encode(text).ids
    # allow_special=True is the library's default: special tokens in the text are matched.
    text = f"one{EOT}two {EOT} three"
    assert ours.encode(text, allow_special=True) == library.encode(text).ids
    assert ours.encode_batch(TEXTS) == [ours.encode(t) for t in TEXTS]
    assert ours.encode_batch([text], allow_special=True) == [library.encode(text).ids]


def test_save_load_keeps_metadata(bpe, bpe_dir):
    loaded = Tokenizer.from_pretrained(bpe_dir)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token, loaded.unk_token) == (EOT, EOT, EOT, None)
    assert loaded.chat_template == bpe.chat_template
    assert loaded.vocab_size == bpe.vocab_size
    # A path straight to tokenizer.json reads the config files next to it.
    assert load_tokenizer(bpe_dir / "tokenizer.json").chat_template == bpe.chat_template


def test_transformers_autotokenizer_parity(bpe, bpe_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(bpe_dir))
    for text in [*TEXTS, f"a {EOT} b"]:
        ids = bpe.encode(text, allow_special=True)
        assert hf(text)["input_ids"] == ids
        assert hf.decode(ids, skip_special_tokens=True) == bpe.decode(ids)
        assert hf.decode(ids) == bpe.decode(ids, skip_special_tokens=False)
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == (EOT, EOT, EOT)
    assert hf.eos_token_id == bpe.eos_token_id
    assert hf.chat_template == bpe.chat_template


@pytest.fixture(scope="module")
def llama_style(tmp_path_factory) -> Tokenizer:
    """Byte-level BPE with "<s>"/"</s>" and a post-processor that adds BOS, as Llama does."""
    trained = train_tokenizer(iter([make_corpus()]), vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
    assert (trained.bos_token, trained.eos_token, trained.unk_token) == ("<s>", "</s>", "<unk>")
    backend = tokenizers.Tokenizer.from_str(trained.backend.to_str())
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", trained.bos_token_id)]
    )
    return Tokenizer(backend, bos_token="<s>", eos_token="</s>", pad_token="</s>", unk_token="<unk>")


def test_add_special_tokens_applies_the_post_processor(llama_style):
    bos = llama_style.bos_token_id
    plain = llama_style.encode("hi </s> 你好", add_special_tokens=False)
    assert llama_style.encode("hi </s> 你好") == [bos, *plain]
    assert llama_style.eos_token_id not in plain
    assert llama_style.encode("hi </s>", allow_special=True)[-1] == llama_style.eos_token_id
    assert llama_style.decode(llama_style.encode("hi </s> 你好")) == "hi </s> 你好"


def test_transformers_parity_with_a_bos_template(llama_style, tmp_path):
    transformers = pytest.importorskip("transformers")
    llama_style.save_pretrained(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in [*TEXTS, "a </s> b <s>"]:
        assert hf(text)["input_ids"] == llama_style.encode(text, allow_special=True)
        assert hf(text, add_special_tokens=False)["input_ids"] == llama_style.encode(
            text, add_special_tokens=False, allow_special=True
        )
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (
        llama_style.bos_token_id,
        llama_style.eos_token_id,
        llama_style.pad_token_id,
        llama_style.unk_token_id,
    )


def test_gpt2_vocab_and_merges_load_like_tokenizer_json(bpe, tmp_path):
    bpe.backend.model.save(str(tmp_path))  # GPT-2's original files: vocab.json + merges.txt
    assert {p.name for p in tmp_path.iterdir()} == {"vocab.json", "merges.txt"}
    gpt2 = load_tokenizer(tmp_path)
    for text in TEXTS:
        assert gpt2.encode(text) == bpe.encode(text)
        assert gpt2.decode(gpt2.encode(text)) == text
    assert gpt2.bos_token == gpt2.eos_token == EOT
    assert gpt2.encode(EOT, allow_special=True) == [bpe.eos_token_id]


def test_roles_inferred_without_config_files(bpe, tmp_path):
    bpe.backend.save(str(tmp_path / "tokenizer.json"))
    bare = load_tokenizer(tmp_path)
    assert (bare.bos_token, bare.eos_token, bare.pad_token) == (EOT, EOT, None)


def test_config_values_may_be_dicts_or_null(bpe, tmp_path):
    bpe.backend.save(str(tmp_path / "tokenizer.json"))
    added = {"content": EOT, "lstrip": False, "rstrip": False, "special": True, "__type": "AddedToken"}
    config = {"eos_token": added, "bos_token": None, "model_max_length": int(1e30)}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": EOT}}))
    loaded = load_tokenizer(tmp_path)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (None, EOT, EOT)
    assert loaded.model_max_length is None


def test_decode_accepts_a_tensor(bpe):
    ids = bpe.encode("tensor 张量 🎉")
    assert bpe.decode(torch.tensor(ids)) == bpe.decode(ids) == "tensor 张量 🎉"
    with pytest.raises(LmforgeError, match="one sequence"):
        bpe.decode(torch.tensor([ids, ids]))


def test_undecodable_bytes_in_training_files_are_replaced(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(make_corpus(n_words=200).encode() + b"\xff\xfe broken \xc3(\n")
    tok = train_tokenizer(path, vocab_size=300)
    assert tok.decode(tok.encode("broken \ufffd")) == "broken \ufffd"


def test_char_tokenizer_round_trips_its_alphabet():
    corpus = make_corpus(n_words=300)
    tok = train_tokenizer(iter([corpus]), vocab_size=1000, kind="char")
    alphabet = sorted(set(corpus))
    assert tok.vocab_size == len(alphabet) + 2  # "<|endoftext|>" and "<unk>"
    assert len(tok.encode(corpus)) == len(corpus)
    assert tok.decode(tok.encode(corpus)) == corpus
    assert tok.encode("Z") == [tok.unk_token_id]  # unseen: unk, which decode drops

    @settings(deadline=None, max_examples=50)
    @given(st.text(alphabet=alphabet))
    def round_trips(text):
        assert tok.decode(tok.encode(text)) == text

    round_trips()


def test_char_tokenizer_keeps_the_most_frequent_characters():
    tok = train_tokenizer(iter(["aaaa bbb cc d"]), vocab_size=5, kind="char")
    assert tok.decode(tok.encode("abcd")) == "ab"  # " " and "a", "b" kept; "c", "d" become unk


def test_vocab_too_small_for_byte_level_bpe():
    with pytest.raises(LmforgeError, match=r"needs at least 257 .* pass --vocab-size >= 257"):
        train_tokenizer(iter(["some text"]), vocab_size=100)


@pytest.mark.parametrize("source", [iter([]), iter(["", ""])], ids=["no-texts", "empty-texts"])
def test_empty_training_data(source):
    with pytest.raises(LmforgeError, match="no text"):
        train_tokenizer(source, vocab_size=300)


def test_empty_and_missing_training_files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(LmforgeError, match="no text"):
        train_tokenizer([tmp_path / "empty.txt"], vocab_size=300)
    with pytest.raises(LmforgeError, match="does not exist"):
        train_tokenizer([tmp_path / "missing.txt"], vocab_size=300)
    with pytest.raises(LmforgeError, match="unknown tokenizer kind"):
        train_tokenizer(iter(["x"]), vocab_size=300, kind="morse")


def test_unusable_tokenizer_paths(tmp_path):
    with pytest.raises(LmforgeError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(LmforgeError, match=r"no tokenizer files .* expected"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(LmforgeError, match=r"not a valid tokenizer\.json"):
        load_tokenizer(tmp_path)
