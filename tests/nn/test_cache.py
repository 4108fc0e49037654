"""The KV cache protocol: each row has its own positions and mask; a row released and admitted again
with a new prompt decodes exactly as that prompt alone (while the other rows decode on); reordered
rows carry their state; static equals dynamic, and the compiled decode step equals the eager one
without compiling again when rows come and go; T5's cross-attention keys are computed once."""

import pytest
import torch

from lmforge.inference.seq2seq import encode_inputs
from lmforge.inference.static_cache import decode_step
from lmforge.models import build_model, get_preset
from lmforge.nn import KVCache

CAPACITY = 40


@pytest.fixture(scope="module", params=["tiny", "llama-tiny"])
def model(request):
    torch.manual_seed(0)
    return build_model(get_preset(request.param, max_seq_len=64)).eval()


def prompt(seed: int, length: int) -> list[int]:
    return torch.randint(0, 512, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def prefill(model, cache: KVCache, prompts: list[list[int]]) -> torch.Tensor:
    """Float logits (B, V) after left-padded prompts fed to `cache` in one pass."""
    longest = max(map(len, prompts))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    is_padded = any(len(p) < longest for p in prompts)
    x = model.hidden(ids, attention_mask=mask if is_padded else None, cache=cache)
    return model.lm_head(x[:, -1]).float()


def alone(model, tokens: list[int], n_steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and logits of one prompt on a cache of its own."""
    cache = model.new_cache(1, CAPACITY)
    logits = [prefill(model, cache, [tokens])[0]]
    out = [int(logits[-1].argmax())]
    for _ in range(n_steps - 1):
        logits.append(decode_step(model, cache, torch.tensor([[out[-1]]]))[0])
        out.append(int(logits[-1].argmax()))
    return out, logits


def test_each_row_has_its_own_positions_and_mask():
    """Left-padded rows count positions from their first real token and see no padding; after a
    release and an admit the rows hold different lengths, and each one's next token is placed,
    numbered and masked by its own."""
    cache = KVCache(1, 3, 8, 1, 2, dtype=torch.float32, device="cpu")
    feed = cache.feed(4, torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]))
    assert feed.positions.tolist() == [[0, 0, 0, 1], [0, 1, 2, 3], [0, 0, 1, 2]]
    row0 = feed.mask[0, 0].int().tolist()  # (T, S): padding queries see themselves alone
    assert row0 == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]
    cache.release(1)
    assert cache.lengths.tolist() == [4, 0, 4] and not cache.valid[1].any()
    two = KVCache(1, 1, 8, 1, 2, dtype=torch.float32, device="cpu")
    two.feed(2)
    cache.admit(1, two)
    feed = cache.feed(1)
    assert feed.slots.tolist() == [[4], [2], [4]]
    assert feed.positions.tolist() == [[2], [2], [3]]
    assert feed.mask[:, 0, 0].int().tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert cache.lengths.tolist() == [5, 3, 5]


def test_a_released_row_does_not_grow():
    cache = KVCache(1, 2, 4, 1, 2, dtype=torch.float32, device="cpu", is_static=True)
    cache.feed(3)
    cache.release(0)
    cache.feed(1)
    assert cache.lengths.tolist() == [0, 4]
    cache.release(1)
    for _ in range(5):  # more tokens than the capacity: a released row holds nothing, whatever it is fed
        feed = cache.feed(1)
        assert feed.mask[:, 0, 0].int().tolist() == [[1, 0, 0, 0]] * 2  # it sees itself alone, never NaN
    assert cache.lengths.tolist() == [0, 0]


def run_with_slot_changes(model, *, is_static: bool, step=decode_step) -> tuple[list, list]:
    """Three prompts decode together; after 3 steps row 1 is released, is fed 2 steps while empty,
    then a new prompt prefilled on a cache of its own is admitted into it, and all decode 6 more.
    Returns each row's tokens and row 1's logits after the admission."""
    prompts = [prompt(0, 9), prompt(1, 4), prompt(2, 6)]
    cache = model.new_cache(3, CAPACITY, is_static=is_static)
    tokens = prefill(model, cache, prompts).argmax(-1)
    rows: list[list[int]] = [[t] for t in tokens.tolist()]
    for step_index in range(11):
        if step_index == 3:
            cache.release(1)
            rows[1] = []
        if step_index == 5:
            one = model.new_cache(1, CAPACITY)
            tokens[1] = prefill(model, one, [prompt(3, 7)])[0].argmax()
            cache.admit(1, one)
            rows[1], admitted = [int(tokens[1])], []
        logits = step(model, cache, tokens[:, None])
        tokens = logits.argmax(-1)
        for row, token in enumerate(tokens.tolist()):
            if row != 1 or step_index >= 5:
                rows[row].append(token)
        if step_index >= 5:
            admitted.append(logits[1])
    return rows, admitted


@pytest.mark.parametrize("is_static", [False, True], ids=["dynamic", "static"])
@torch.inference_mode()
def test_a_released_row_admitted_again_decodes_as_its_prompt_alone(model, is_static):
    rows, admitted = run_with_slot_changes(model, is_static=is_static)
    expected, expected_logits = alone(model, prompt(3, 7), 7)
    assert rows[1] == expected
    torch.testing.assert_close(torch.stack(admitted), torch.stack(expected_logits[1:]), rtol=0, atol=1e-5)
    assert rows[0] == alone(model, prompt(0, 9), 12)[0]  # the other rows never noticed
    assert rows[2] == alone(model, prompt(2, 6), 12)[0]


@pytest.mark.parametrize("is_static", [False, True], ids=["dynamic", "static"])
@torch.inference_mode()
def test_reordered_rows_carry_their_state(model, is_static):
    """Rows moved (and copied) by `reorder` decode on as the rows they came from."""
    prompts = [prompt(4, 5), prompt(5, 8)]
    cache, reference = (model.new_cache(2, CAPACITY, is_static=is_static) for _ in range(2))
    tokens = prefill(model, cache, prompts).argmax(-1)
    prefill(model, reference, prompts)
    for _ in range(2):
        decode_step(model, reference, tokens[:, None])
        tokens = decode_step(model, cache, tokens[:, None]).argmax(-1)
    index = torch.tensor([1, 1, 0])
    cache.reorder(index)
    got = decode_step(model, cache, tokens[index, None])
    expected = decode_step(model, reference, tokens[:, None])[index]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@torch.inference_mode()
def test_static_equals_dynamic(model):
    static, dynamic = (run_with_slot_changes(model, is_static=s) for s in (True, False))
    assert static[0] == dynamic[0]
    torch.testing.assert_close(torch.stack(static[1]), torch.stack(dynamic[1]), rtol=0, atol=1e-5)


def test_compiled_step_equals_eager_and_compiles_once(model):
    """aot_eager traces the step as inductor does (functionalized in-place updates of the cache)
    without compiling C++; releasing and admitting rows between steps compiles nothing new."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(decode_step, backend="aot_eager", dynamic=False)
    try:
        with torch.inference_mode():
            eager = run_with_slot_changes(model, is_static=True)
            got = run_with_slot_changes(model, is_static=True, step=compiled)
    finally:
        torch._dynamo.reset()
    assert got[0] == eager[0]
    torch.testing.assert_close(torch.stack(got[1]), torch.stack(eager[1]), rtol=0, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1


@torch.inference_mode()
def test_t5_cross_attention_keys_are_computed_once_and_static_equals_dynamic():
    torch.manual_seed(0)
    t5 = build_model(get_preset("t5-tiny", max_seq_len=64)).eval()
    decoder = encode_inputs(t5, [prompt(6, 9), prompt(7, 5)], pad_token_id=0)  # right-padded inputs
    logits = {}
    for is_static in (False, True):
        cache = decoder.new_cache(2, 12, is_static=is_static)
        tokens = torch.zeros(2, dtype=torch.long)  # the decoder start token
        steps = [decode_step(decoder, cache, tokens[:, None])]
        first_keys = cache.cross.keys[0]
        for _ in range(5):
            steps.append(decode_step(decoder, cache, steps[-1].argmax(-1)[:, None]))
        assert cache.cross.keys[0] is first_keys
        logits[is_static] = torch.stack(steps)
    torch.testing.assert_close(logits[True], logits[False], rtol=0, atol=1e-5)
