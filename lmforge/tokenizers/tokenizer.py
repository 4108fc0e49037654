"""The `Tokenizer` wrapper and loading from disk, on the Hugging Face `tokenizers` library.

A `Tokenizer` is a `tokenizers.Tokenizer` (the Rust pipeline: normalizer, pre-tokenizer, model,
post-processor, decoder) plus the special-token roles (bos, eos, pad, unk), the model's context length
and its chat template. On disk it follows the Hugging Face layout: `tokenizer.json` (the `tokenizers`
serialization), `tokenizer_config.json` and `special_tokens_map.json` (the `transformers` metadata), or the
older GPT-2 pair `vocab.json` + `merges.txt` (Radford et al. 2019, byte-level BPE).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors

from lmforge.errors import LmforgeError

SPECIAL_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token", "cls_token", "sep_token", "mask_token")

# Conventional spellings, tried in order when no config file names a role.
_ROLE_CANDIDATES = {
    "bos_token": ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"),
    "eos_token": ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"),
    "pad_token": ("<pad>", "[PAD]", "<|pad|>"),
    "unk_token": ("<unk>", "[UNK]", "<|unk|>"),
    "cls_token": ("[CLS]",),
    "sep_token": ("[SEP]",),
    "mask_token": ("[MASK]", "<mask>"),
}
# transformers writes this (int(1e30)) when a tokenizer has no known context length.
_NO_MAX_LENGTH = 10**12


class Tokenizer:
    """Text <-> token ids, with special-token roles and a chat template.

    Owns `backend`: the named special tokens are registered on it as special added tokens, so that
    `decode` skips them and `encode(..., allow_special=True)` matches their literal text.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        cls_token: str | None = None,
        sep_token: str | None = None,
        mask_token: str | None = None,
        chat_template: str | None = None,
        model_max_length: int | None = None,
    ):
        roles = (bos_token, eos_token, pad_token, unk_token, cls_token, sep_token, mask_token)
        self._special_tokens = dict(zip(SPECIAL_ROLES, roles))
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        # A tokenizer.json may carry padding/truncation; lmforge pads and truncates explicitly instead.
        backend.no_padding()
        backend.no_truncation()
        already_special = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        missing = [t for t in self._special_tokens.values() if t is not None and t not in already_special]
        if missing:
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        self._backend = backend
        # NOTE: a second configured copy, rather than flipping `encode_special_tokens` per call, keeps
        # encoding free of shared mutable state, so a server may encode from many threads at once.
        self._plain_backend = tokenizers.Tokenizer.from_str(backend.to_str())
        self._plain_backend.encode_special_tokens = True
        self._special_ids = frozenset(i for i, t in backend.get_added_tokens_decoder().items() if t.special)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        """Load from a directory or a tokenizer.json file (see `load_tokenizer`)."""
        return load_tokenizer(path)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer`, to read, not change: `encode` also uses a copy of it."""
        return self._backend

    def encode(self, text: str, *, add_special_tokens: bool = True, allow_special: bool = False) -> list[int]:
        """Token ids of `text`.

        add_special_tokens applies the post-processor (e.g. a Llama BOS). With allow_special=False the
        literal text of a special token (say "<|endoftext|>" in user input) is encoded as plain text,
        so input text can never forge a control token.
        """
        return self.encoding(text, add_special_tokens=add_special_tokens, allow_special=allow_special).ids

    def encoding(
        self, text: str, *, add_special_tokens: bool = True, allow_special: bool = False
    ) -> tokenizers.Encoding:
        """`encode`'s `tokenizers.Encoding` (ids, tokens, offsets), for callers that merge or post-process."""
        backend = self._backend if allow_special else self._plain_backend
        return backend.encode(text, add_special_tokens=add_special_tokens)

    def encode_batch(
        self, texts: Sequence[str], *, add_special_tokens: bool = True, allow_special: bool = False
    ) -> list[list[int]]:
        """`encode` for many texts, in parallel across CPU cores."""
        backend = self._backend if allow_special else self._plain_backend
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def encode_inputs(
        self,
        texts: str | tuple[str, str] | Sequence[str | tuple[str, str]],
        *,
        max_length: int | None = None,
        truncation: bool = True,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """Encoder inputs for a text, a (text_a, text_b) pair, or a list of either: a dict of
        input_ids, token_type_ids and attention_mask, one right-padded row per input.

        The post-processor adds the special tokens (BERT: `[CLS] a [SEP] b [SEP]`, b with token type 1).
        With truncation, rows are cut to max_length (default: model_max_length) tokens, taking from the
        longer segment first, as transformers' "longest_first". return_tensors="pt": (B, T) tensors.
        """
        is_one = isinstance(texts, str) or (isinstance(texts, tuple) and len(texts) == 2)
        items = [texts] if is_one else list(texts)
        firsts = [t if isinstance(t, str) else t[0] for t in items]
        seconds = [t[1] for t in items if not isinstance(t, str)]
        backend = self._plain_backend
        a_encodings = backend.encode_batch(firsts, add_special_tokens=False)
        b_encodings = iter(backend.encode_batch(seconds, add_special_tokens=False))
        max_length = max_length or self.model_max_length
        rows = []
        for item, a in zip(items, a_encodings):
            b = None if isinstance(item, str) else next(b_encodings)
            if truncation and max_length is not None:
                _truncate_longest_first(a, b, max_length - backend.num_special_tokens_to_add(b is not None))
            rows.append(backend.post_process(a, b, add_special_tokens=True))
        return self._pad(rows, return_tensors)

    def _pad(self, rows: list[tokenizers.Encoding], return_tensors: str | None) -> dict[str, Any]:
        width = max(len(row.ids) for row in rows)
        if self.pad_token_id is None and any(len(row.ids) < width for row in rows):
            raise LmforgeError(
                "this tokenizer has no pad token, so inputs of different lengths cannot be batched"
            )
        batch: dict[str, Any] = {"input_ids": [], "token_type_ids": [], "attention_mask": []}
        for row in rows:
            n_pad = width - len(row.ids)
            batch["input_ids"].append(row.ids + [self.pad_token_id] * n_pad)
            batch["token_type_ids"].append(row.type_ids + [0] * n_pad)
            batch["attention_mask"].append([1] * len(row.ids) + [0] * n_pad)
        if return_tensors == "pt":
            import torch

            batch = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        return batch

    def decode(self, ids: Iterable[int] | Any, *, skip_special_tokens: bool = True) -> str:
        """Text of `ids`: a list of ints or a 1-D tensor/array."""
        if hasattr(ids, "tolist"):  # torch tensor or numpy array, without importing either
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        try:
            return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        except TypeError as e:
            raise LmforgeError(
                "decode takes one sequence of token ids (a list of ints or a 1-D tensor); pass one row at a time"
            ) from e

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        roles = ", ".join(f"{k}={v!r}" for k, v in self._special_tokens.items() if v is not None)
        return f"Tokenizer(vocab_size={self.vocab_size}, {roles})"

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token(self) -> str | None:
        return self._special_tokens["bos_token"]

    @property
    def eos_token(self) -> str | None:
        return self._special_tokens["eos_token"]

    @property
    def pad_token(self) -> str | None:
        return self._special_tokens["pad_token"]

    @property
    def unk_token(self) -> str | None:
        return self._special_tokens["unk_token"]

    @property
    def bos_token_id(self) -> int | None:
        return self._role_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._role_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._role_id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._role_id("unk_token")

    @property
    def cls_token_id(self) -> int | None:
        """[CLS]: starts every BERT input; its last hidden state summarises the sequence."""
        return self._role_id("cls_token")

    @property
    def sep_token_id(self) -> int | None:
        """[SEP]: ends each segment of a BERT input."""
        return self._role_id("sep_token")

    @property
    def mask_token_id(self) -> int | None:
        """[MASK]: replaces the tokens a masked language model learns to predict."""
        return self._role_id("mask_token")

    @property
    def all_special_ids(self) -> list[int]:
        """Ids that `decode(..., skip_special_tokens=True)` drops, sorted."""
        return sorted(self._special_ids)

    def is_special_id(self, token_id: int) -> bool:
        """Whether `decode` with skip_special_tokens drops this id."""
        return token_id in self._special_ids

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry of an id (byte-level BPE shows bytes as printable chars), or None."""
        return self._backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry, or None."""
        return self._backend.token_to_id(token)

    def _role_id(self, role: str) -> int | None:
        token = self._special_tokens[role]
        return None if token is None else self._backend.token_to_id(token)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json.

        The layout `transformers.AutoTokenizer.from_pretrained` reads (as a PreTrainedTokenizerFast).
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self._backend.save(str(out_dir / "tokenizer.json"))
        config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
        # Explicit nulls, so that reloading does not re-infer a role this tokenizer leaves unset.
        config.update(self._special_tokens)
        # NOTE: transformers would otherwise "clean up" spaces before punctuation when decoding.
        config["clean_up_tokenization_spaces"] = False
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        special_map = {k: v for k, v in self._special_tokens.items() if v is not None}
        (out_dir / "tokenizer_config.json").write_text(
            json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (out_dir / "special_tokens_map.json").write_text(
            json.dumps(special_map, indent=2) + "\n", encoding="utf-8"
        )


def _truncate_longest_first(a: tokenizers.Encoding, b: tokenizers.Encoding | None, budget: int) -> None:
    """Cut a (and b) in place to at most `budget` tokens in all, as the `tokenizers` library does:
    the longer segment loses tokens until both are equal, then they share the budget evenly."""
    budget = max(budget, 0)
    if b is None:
        if len(a) > budget:
            a.truncate(budget)
        return
    if len(a) + len(b) <= budget:
        return
    short, long = sorted((len(a), len(b)))
    long = short if short > budget else max(short, budget - short)
    if short + long > budget:
        short, long = budget // 2, budget // 2 + budget % 2
    n_a, n_b = (long, short) if len(a) > len(b) else (short, long)
    a.truncate(n_a)
    b.truncate(n_b)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a directory or a tokenizer.json file.

    A directory holds tokenizer.json, or GPT-2's vocab.json + merges.txt; tokenizer_config.json and
    special_tokens_map.json next to it name the special tokens, which are otherwise inferred from
    conventional spellings ("<|endoftext|>", "<s>", "</s>", "<pad>", "<unk>", ...). A .gguf file (or a
    directory holding one) gives the tokenizer its metadata describes; a known name or a hub id is
    resolved first (lmforge.hub).
    """
    from lmforge.hub import resolve_model

    path = resolve_model(path)
    if path.suffix == ".gguf" and path.is_file():
        from lmforge.gguf import read_gguf_tokenizer

        backend, fields = read_gguf_tokenizer(path)
        return Tokenizer(backend, **fields)
    expected = (
        "a directory with tokenizer.json (or vocab.json + merges.txt, or a BERT vocab.txt), "
        "or a tokenizer.json file"
    )
    if path.is_file():
        directory, backend = path.parent, _read_tokenizer_json(path)
    elif path.is_dir():
        directory = path
        if (path / "tokenizer.json").is_file():
            backend = _read_tokenizer_json(path / "tokenizer.json")
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            backend = _build_gpt2_bpe(path / "vocab.json", path / "merges.txt")
        elif (path / "vocab.txt").is_file():
            from lmforge.tokenizers.wordpiece import read_vocab_txt

            lowercase = _read_json(path / "tokenizer_config.json").get("do_lower_case", True)
            backend = read_vocab_txt(path / "vocab.txt", lowercase=bool(lowercase))
        else:
            raise LmforgeError(f"no tokenizer files in {path}: expected {expected}")
    else:
        raise LmforgeError(f"tokenizer path {path} does not exist: expected {expected}")
    config = _read_json(directory / "tokenizer_config.json")
    special_map = _read_json(directory / "special_tokens_map.json")
    roles = resolve_special_roles(backend, config, special_map)
    max_length = config.get("model_max_length")
    if not isinstance(max_length, int) or max_length >= _NO_MAX_LENGTH:
        max_length = None
    chat_template = _read_chat_template(directory, config)
    return Tokenizer(backend, **roles, chat_template=chat_template, model_max_length=max_length)


def _read_tokenizer_json(path: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception for bad JSON or an unknown schema
        raise LmforgeError(
            f"{path} is not a valid tokenizer.json ({e}); re-save it with the `tokenizers` library"
        ) from e


def _build_gpt2_bpe(vocab: Path, merges: Path) -> tokenizers.Tokenizer:
    """GPT-2's byte-level BPE from its original vocab.json + merges.txt files."""
    try:
        backend = tokenizers.Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as e:
        raise LmforgeError(
            f"cannot read BPE files {vocab} and {merges} ({e}); check they are GPT-2 style"
        ) from e
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from an optional metadata file; {} when the file is absent."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path} is not valid JSON ({e}); fix or delete it") from e
    if not isinstance(data, dict):
        raise LmforgeError(f"{path} should hold a JSON object; fix or delete it")
    return data


def resolve_special_roles(
    backend: tokenizers.Tokenizer, config: dict[str, Any], special_map: dict[str, Any]
) -> dict[str, str | None]:
    """bos/eos/pad/unk tokens: as named in the two config files (null included), else inferred.

    Inference takes the first conventional spelling present in the vocabulary.
    """
    roles: dict[str, str | None] = {}
    for role in SPECIAL_ROLES:
        # As in transformers, special_tokens_map.json overrides tokenizer_config.json.
        if role in special_map:
            roles[role] = _token_content(special_map[role], role)
        elif role in config:
            roles[role] = _token_content(config[role], role)
        else:
            found = (t for t in _ROLE_CANDIDATES[role] if backend.token_to_id(t) is not None)
            roles[role] = next(found, None)
    # GPT-2 convention: "<|endoftext|>" both ends and starts a document.
    is_bos_named = "bos_token" in special_map or "bos_token" in config
    if not is_bos_named and roles["bos_token"] is None and roles["eos_token"] == "<|endoftext|>":
        roles["bos_token"] = "<|endoftext|>"
    return roles


def _token_content(value: Any, role: str) -> str | None:
    """A special token written as "<s>", as {"content": "<s>", ...} (an AddedToken), or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise LmforgeError(
        f"{role} in the tokenizer config should be a string or {{'content': ...}}, got {value!r}"
    )


def _read_chat_template(directory: Path, config: dict[str, Any]) -> str | None:
    """The chat template, kept as Jinja source: chat_template.jinja, else tokenizer_config.json."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    return template if isinstance(template, str) else None
