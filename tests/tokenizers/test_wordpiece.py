"""WordPiece: training a BERT tokenizer, pair encoding with padding and truncation equal to `tokenizers`
and transformers, special tokens, loading BERT tokenizer.json and vocab.txt folders, round trips."""

import pytest
import tokenizers
from conftest import _quiet_transformers

from lmforge.errors import LmforgeError
from lmforge.tokenizers import load_tokenizer, train_tokenizer

TEXT = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with one step.\n"
    "Transformers encode sentences; BERT reads both directions at once! Tokenizers split words into pieces.\n"
    "Semantic search ranks documents by the cosine similarity of their embeddings.\n"
) * 30
SENTENCES = ["The quick brown fox.", "Tokenizers split unbelievably long words!", "a", ""]
PAIRS = [
    ("The quick brown fox jumps over the lazy dog", "BERT reads both directions"),
    ("one step", "A journey of a thousand miles begins with one step and then many more steps"),
    ("Semantic search", ""),
]


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    out = tmp_path_factory.mktemp("wp")
    (out / "corpus.txt").write_text(TEXT)
    tok = train_tokenizer([out / "corpus.txt"], vocab_size=300, kind="wordpiece")
    tok.save_pretrained(out / "tok")
    return tok, out / "tok"


def test_training_gives_bert_special_tokens_and_a_wordpiece_vocabulary(wordpiece):
    tok, _ = wordpiece
    assert tok.vocab_size <= 300
    assert [tok.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert any(tok.id_to_token(i).startswith("##") for i in range(tok.vocab_size))
    ids = tok.encode("The FOX")
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids) == "the fox"  # lowercased, special tokens dropped


def test_round_trip_of_lowercase_text(wordpiece):
    tok, _ = wordpiece
    text = "transformers encode sentences ; bert reads both directions at once!"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("zebra∑")[1:-1].count(tok.unk_token_id) >= 1  # unseen characters become [UNK]


def test_pair_encoding_layout(wordpiece):
    tok, _ = wordpiece
    batch = tok.encode_inputs(("the fox", "the dog"))
    ids, types = batch["input_ids"][0], batch["token_type_ids"][0]
    a, b = tok.encode("the fox", add_special_tokens=False), tok.encode("the dog", add_special_tokens=False)
    assert ids == [tok.cls_token_id, *a, tok.sep_token_id, *b, tok.sep_token_id]
    assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert batch["attention_mask"][0] == [1] * len(ids)


def _reference(path, inputs, max_length):
    """What the `tokenizers` library gives with its own padding and truncation on the same file."""
    ref = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    ref.enable_padding(pad_id=0, pad_token="[PAD]")
    if max_length:
        ref.enable_truncation(max_length)
    encodings = ref.encode_batch(inputs)
    return {
        "input_ids": [e.ids for e in encodings],
        "token_type_ids": [e.type_ids for e in encodings],
        "attention_mask": [e.attention_mask for e in encodings],
    }


@pytest.mark.parametrize("max_length", [None, 6, 9, 12, 15])
@pytest.mark.parametrize("inputs", ["singles", "pairs"])
def test_padding_and_truncation_equal_tokenizers_and_transformers(wordpiece, inputs, max_length):
    tok, path = wordpiece
    items = SENTENCES if inputs == "singles" else PAIRS
    ours = tok.encode_inputs(items, max_length=max_length, truncation=max_length is not None)
    assert ours == _reference(path, items, max_length)
    hf = _quiet_transformers().AutoTokenizer.from_pretrained(path)
    firsts = [x if isinstance(x, str) else x[0] for x in items]
    seconds = None if inputs == "singles" else [x[1] for x in items]
    theirs = hf(
        firsts,
        seconds,
        padding=True,
        truncation=max_length is not None,
        max_length=max_length,
        return_token_type_ids=True,
    )
    assert ours == {k: theirs[k] for k in ours}


def test_tensors_and_default_max_length(wordpiece):
    tok, _ = wordpiece
    tok.model_max_length = 8
    try:
        batch = tok.encode_inputs(["a " * 50, "b"], return_tensors="pt")
    finally:
        tok.model_max_length = None
    assert batch["input_ids"].shape == (2, 8) and batch["input_ids"].dtype.is_floating_point is False
    assert batch["attention_mask"].sum(1).tolist() == [8, 3]


def test_real_bert_tokenizer_json_and_vocab_txt_folder_agree(wordpiece, tmp_path):
    """A BERT tokenizer saved by transformers loads from tokenizer.json, and from vocab.txt alone."""
    transformers = _quiet_transformers()
    _, path = wordpiece
    vocab = load_tokenizer(path).backend.get_vocab()
    (tmp_path / "vocab.txt").write_text(
        "".join(t + "\n" for t, _ in sorted(vocab.items(), key=lambda x: x[1]))
    )
    hf = transformers.BertTokenizer.from_pretrained(tmp_path)  # reads vocab.txt
    hf.save_pretrained(tmp_path / "hf")  # writes tokenizer.json, as real BERT checkpoints have
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    from_json = load_tokenizer(tmp_path / "hf")
    (tmp_path / "txt-only").mkdir()
    (tmp_path / "txt-only" / "vocab.txt").write_text((tmp_path / "vocab.txt").read_text())
    from_txt = load_tokenizer(tmp_path / "txt-only")
    for tok in (from_json, from_txt):
        assert (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.pad_token_id) == (2, 3, 4, 0)
        for a, b in PAIRS[:2]:  # (transformers takes an empty text_pair for no pair at all)
            assert tok.encode_inputs((a, b))["input_ids"][0] == hf(a, b)["input_ids"]
        assert tok.decode(tok.encode("The fox")) == "the fox"


def test_vocabulary_too_small_is_refused(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT)
    with pytest.raises(LmforgeError, match="vocab"):
        train_tokenizer([tmp_path / "c.txt"], vocab_size=3, kind="wordpiece")
