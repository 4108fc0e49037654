"""T5's relative position buckets equal transformers' `T5Attention._relative_position_bucket`, and the
bias module gives each (query, key) pair the learned value of its bucket."""

import pytest
import torch
from transformers.models.t5.modeling_t5 import T5Attention

from lmforge.nn import RelativePositionBias, relative_position_bucket


@pytest.mark.parametrize("is_bidirectional", [True, False])
@pytest.mark.parametrize(("n_buckets", "max_distance"), [(32, 128), (8, 20), (6, 7), (16, 16)])
def test_buckets_equal_transformers_on_a_grid(is_bidirectional, n_buckets, max_distance):
    relative = torch.arange(-300, 301)[:, None] + torch.arange(-3, 4)[None, :]  # (601, 7) distances
    ours = relative_position_bucket(
        relative, is_bidirectional=is_bidirectional, n_buckets=n_buckets, max_distance=max_distance
    )
    theirs = T5Attention._relative_position_bucket(
        relative, bidirectional=is_bidirectional, num_buckets=n_buckets, max_distance=max_distance
    )
    assert torch.equal(ours, theirs)
    assert ours.min() >= 0 and ours.max() < n_buckets


def test_unidirectional_buckets_ignore_future_keys():
    # A causal decoder never attends to later keys, so they all share bucket 0 (with distance 0).
    future = torch.arange(0, 50)
    buckets = relative_position_bucket(future, is_bidirectional=False, n_buckets=32, max_distance=128)
    assert buckets.eq(0).all()


def test_bias_reads_the_bucket_of_each_pair_with_cached_positions():
    torch.manual_seed(0)
    bias = RelativePositionBias(n_heads=3, n_buckets=8, max_distance=20, is_bidirectional=False)
    torch.nn.init.normal_(bias.weight)
    full = bias(q_len=9, k_len=9)  # (1, 3, 9, 9)
    assert full.shape == (1, 3, 9, 9)
    # One decoding step at position 6 sees row 6 of the full table, over keys 0..6.
    assert torch.equal(bias(q_len=1, k_len=7, past_len=6), full[:, :, 6:7, :7])
    buckets = relative_position_bucket(
        torch.arange(9)[None] - torch.arange(9)[:, None], is_bidirectional=False, n_buckets=8, max_distance=20
    )
    assert torch.equal(full[0].permute(1, 2, 0), bias.weight[buckets])
