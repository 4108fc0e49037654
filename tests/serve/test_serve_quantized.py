"""`lmforge serve --quantize int8`: the server decodes with int8 weights, and its greedy text equals
`lmforge.generate` on the same model quantized in process (the same layers, the same kernels)."""

import pytest
from conftest import make_hf_llama
from lmforge_server import lmforge_serve

import lmforge

pytestmark = pytest.mark.slow  # a server process (about 3 s to start)


def test_served_int8_model_equals_the_same_quantized_in_process(tmp_path, bpe):
    path = tmp_path / "llama"
    bpe.save_pretrained(path)
    make_hf_llama(path, vocab_size=lmforge.load_tokenizer(path).vocab_size)
    model, tok = lmforge.load_model(path, quantize="int8"), lmforge.load_tokenizer(path)
    expected = lmforge.generate(model, tok, "The sea is", max_new_tokens=12, temperature=0)
    with lmforge_serve(path, "--quantize", "int8", log=tmp_path / "server.log") as server:
        answer = server.client().completions.create(
            model="m", prompt="The sea is", max_tokens=12, temperature=0
        )
    assert answer.choices[0].text == expected
