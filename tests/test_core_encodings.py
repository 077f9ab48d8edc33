"""Each encoding against its definition: closed forms and transformers' own reference implementations."""

import math

import pytest
import torch
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.t5.modeling_t5 import T5Attention

from hf_posenc.model.encodings_hf_posenc import (
    AlibiPositionEncoding,
    alibi_slopes,
    sinusoidal_table,
    t5_causal_bucket,
)
from tests.conftest import tiny_config, tiny_model


def test_sinusoidal_matches_closed_form():
    dim, positions = 10, torch.arange(50)
    table = sinusoidal_table(positions[None], dim)[0]  # (50, 10)
    for pos in (0, 1, 7, 49):
        for i in range(dim // 2):
            angle = pos / 10000 ** (2 * i / dim)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_is_added_to_embeddings_scaled():
    model = tiny_model("sinusoidal", sinusoidal_scale=0.5)
    ids = torch.tensor([[5, 5, 5]])
    hidden = model.model.embed_tokens(ids)
    added = model.model.position_encoding.input_embedding(torch.arange(3)[None], hidden.dtype)
    torch.testing.assert_close(added, 0.5 * sinusoidal_table(torch.arange(3)[None], 32))


@pytest.mark.parametrize("num_heads", [1, 2, 4, 5, 6, 8, 12, 16, 20, 32])
def test_alibi_slopes_match_bloom(num_heads):
    mask = torch.ones(1, 4)
    bloom = build_alibi_tensor(mask, num_heads, torch.float32)  # (heads, 1, 4): slope * key position
    torch.testing.assert_close(alibi_slopes(num_heads), bloom[:, 0, 1])


def test_alibi_bias_is_linear_in_distance():
    encoding = AlibiPositionEncoding(tiny_config("alibi"))
    bias = encoding.score_bias(6, torch.device("cpu"), torch.float32)
    heads = torch.arange(4)[:, None, None]
    dense = bias(heads, torch.arange(6)[None, :, None], torch.arange(6)[None, None, :])  # (4, 6, 6)
    slopes = alibi_slopes(4)
    assert dense[:, 5, 2].tolist() == pytest.approx((-3 * slopes).tolist())
    assert dense[:, 3, 3].abs().max() == 0


@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 32), (16, 20)])
def test_t5_buckets_match_transformers(num_buckets, max_distance):
    distance = torch.arange(0, 400)
    expected = T5Attention._relative_position_bucket(
        -distance, bidirectional=False, num_buckets=num_buckets, max_distance=max_distance
    )
    torch.testing.assert_close(t5_causal_bucket(distance, num_buckets, max_distance), expected)


def test_t5_bias_reads_the_learned_table():
    model = tiny_model("t5_bias")
    encoding = model.model.position_encoding
    bias = encoding.score_bias(40, torch.device("cpu"), torch.float32)
    table = encoding.relative_attention_bias.weight  # (buckets, heads)
    for distance in (0, 3, 5, 39):
        bucket = t5_causal_bucket(torch.tensor(distance), 8, 32)
        value = bias(torch.tensor(2), torch.tensor(distance), torch.tensor(0))
        assert value.item() == pytest.approx(table[bucket, 2].item())


def test_rope_frequencies_follow_transformers_rope_utilities():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = tiny_config("rope", rope_scaling={"rope_type": "linear", "factor": 4.0})
    model = tiny_model("rope", rope_scaling={"rope_type": "linear", "factor": 4.0})
    expected, _ = ROPE_INIT_FUNCTIONS["linear"](config)
    torch.testing.assert_close(model.model.position_encoding.frequencies.inv_freq, expected)


def test_learned_has_a_table_the_others_do_not():
    names = {pe: [n for n, _ in tiny_model(pe).named_parameters() if "position_encoding" in n] for pe in
             ("sinusoidal", "learned", "rope", "alibi", "t5_bias", "nope")}
    assert names["learned"] == ["model.position_encoding.position_embeddings.weight"]
    assert names["t5_bias"] == ["model.position_encoding.relative_attention_bias.weight"]
    assert all(not names[pe] for pe in ("sinusoidal", "rope", "alibi", "nope"))
