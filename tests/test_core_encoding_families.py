"""Closed forms of the encoding families beyond the first six: Kerple, FIRE, xPos, Sandwich, dynamic bias,
p-RoPE and ALiBi on a subset of heads. Backend agreement, caches, padding, compile, save/load and remote code
are covered for every built-in by the registry-parametrized tests."""

import math

import pytest
import torch

from hf_posenc.model.encodings_hf_posenc import (
    PositionEncoding,
    alibi_slopes,
    build_position_encoding,
    position_encoding_class,
)
from tests.conftest import ENCODINGS, tiny_config


def bias_table(encoding, query_pos, key_pos, key_length=None):
    """(heads, len) bias of an encoding at the given (broadcast) query and key positions."""
    heads = torch.arange(encoding.config.num_attention_heads)[:, None]
    length = key_length or int(max(query_pos.max(), key_pos.max())) + 1
    with torch.no_grad():
        return encoding.score_bias(length, torch.device("cpu"), torch.float32)(heads, query_pos[None], key_pos[None])


def test_kerple_log_closed_form():
    encoding = build_position_encoding(tiny_config("kerple_log"))
    r1, r2 = encoding.coefficients()
    torch.testing.assert_close(r1, torch.ones(4))  # initial r1 = r2 = 1: the bias is -log(1 + d)
    torch.testing.assert_close(r2, torch.ones(4))
    distance = torch.arange(20)
    values = bias_table(encoding, distance + 5, torch.full_like(distance, 5))
    torch.testing.assert_close(values, -torch.log1p(distance.float()).expand(4, -1))
    with torch.no_grad():
        encoding.raw_r1.copy_(torch.tensor([-3.0, 0.0, 1.0, 4.0]))
        encoding.raw_r2.copy_(torch.tensor([2.0, -1.0, 0.5, -6.0]))
    r1, r2 = encoding.coefficients()
    expected = -r1[:, None] * torch.log1p(r2[:, None] * distance.float())
    torch.testing.assert_close(bias_table(encoding, distance + 5, torch.full_like(distance, 5)), expected)


def test_kerple_power_closed_form_and_range():
    encoding = build_position_encoding(tiny_config("kerple_power"))
    r1, r2 = encoding.coefficients()
    torch.testing.assert_close(r1, torch.ones(4))
    torch.testing.assert_close(r2, torch.ones(4))  # the bias starts linear, like ALiBi with slope 1
    distance = torch.arange(16)
    torch.testing.assert_close(bias_table(encoding, distance, torch.zeros_like(distance)), -distance.float().expand(4, -1))
    with torch.no_grad():  # extreme raw values: still inside r1 > 0, 0 < r2 <= 2, and still differentiable
        encoding.raw_r1.copy_(torch.tensor([-30.0, -2.0, 3.0, 30.0]))
        encoding.raw_r2.copy_(torch.tensor([-30.0, -1.0, 2.0, 30.0]))
    r1, r2 = encoding.coefficients()
    assert (r1 > 0).all() and (r2 > 0).all() and (r2 <= 2).all()
    values = bias_table(encoding, distance, torch.zeros_like(distance))
    torch.testing.assert_close(values, -r1[:, None] * distance.float() ** r2[:, None])
    bias = encoding.score_bias(16, torch.device("cpu"), torch.float32)
    bias(torch.arange(4)[:, None], distance[None], torch.zeros_like(distance)[None]).sum().backward()
    assert (encoding.raw_r1.grad != 0).all() and (encoding.raw_r2.grad[1:3] != 0).all()


def fire_reference(encoding, query_pos, key_pos):
    """FIRE's formula evaluated directly with the MLP: f(psi(i - j) / psi(max(L, i)))."""
    c, length = encoding.c.abs(), encoding.length.abs()
    psi = lambda x: torch.log(c * x + 1)  # noqa: E731
    x = psi((query_pos - key_pos).float()) / psi(torch.maximum(query_pos.float(), length))
    with torch.no_grad():
        return encoding.mlp(x[:, None]).t()  # (heads, n)


def test_fire_matches_its_formula_and_depends_on_the_query_beyond_L():
    config = tiny_config("fire", max_position_embeddings=32)
    torch.manual_seed(0)
    encoding = build_position_encoding(config)
    for module in encoding.mlp:  # larger weights than the model's init, so the bias has visible structure
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=1.0)
            torch.nn.init.normal_(module.bias, std=0.5)
    assert encoding.length.item() == 32.0 and encoding.c.item() == pytest.approx(0.1)  # L = training length
    assert build_position_encoding(tiny_config("fire", fire_init_length=20)).length.item() == 20.0
    query = torch.tensor([0, 5, 9, 31, 31, 40, 80, 200, 200])
    key = torch.tensor([0, 0, 3, 0, 30, 20, 3, 150, 0])
    # interpolation on a 1025-point grid of [0, 1]: exact up to the cells that hold one of the ReLU kinks
    torch.testing.assert_close(bias_table(encoding, query, key, 256), fire_reference(encoding, query, key), atol=2e-3, rtol=0)
    # below L the bias is a function of the distance only; beyond L the same distance gives another bias
    inside = bias_table(encoding, torch.tensor([10, 20]), torch.tensor([5, 15]), 64)
    torch.testing.assert_close(inside[:, 0], inside[:, 1])
    beyond = bias_table(encoding, torch.tensor([100, 200]), torch.tensor([95, 195]), 256)
    assert (beyond[:, 0] - beyond[:, 1]).abs().max() > 1e-3


def xpos_scores(config, n, m, channel):
    """<R_q(n) e_c, R_k(m) e_c> for the unit vector e_c, from the encoding's own (cos, sin) tables."""
    encoding = build_position_encoding(config)
    positions = torch.tensor([[n, m]])
    query_cos, query_sin, key_cos, key_sin = (t.double() for t in encoding.rotary(torch.zeros(1), positions))
    unit = torch.zeros(config.head_dim, dtype=torch.float64)
    unit[channel] = 1.0
    half = config.head_dim // 2
    rotate_half = lambda x: torch.cat((-x[half:], x[:half]))  # noqa: E731
    query = unit * query_cos[0, 0] + rotate_half(unit) * query_sin[0, 0]
    key = unit * key_cos[0, 1] + rotate_half(unit) * key_sin[0, 1]
    return (query * key).sum().item()


@pytest.mark.parametrize("n, m", [(5, 0), (40, 7), (600, 100), (16000, 15000)])
def test_xpos_score_is_the_rope_score_times_the_decay(n, m):
    config = tiny_config("xpos", hidden_size=64, num_attention_heads=4, num_key_value_heads=2)  # head_dim 16
    d = config.head_dim
    for channel in (0, 3, 7):
        theta = 10000.0 ** (-2 * channel / d)
        zeta = (2 * channel / d + 0.4) / 1.4
        expected = zeta ** ((n - m) / 512) * math.cos((n - m) * theta)
        assert xpos_scores(config, n, m, channel) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_xpos_is_safe_in_bfloat16_at_16k_positions():
    config = tiny_config("xpos", max_position_embeddings=2048)
    encoding = build_position_encoding(config)
    positions = torch.arange(16384)[None]
    tables = encoding.rotary(torch.zeros(1, dtype=torch.bfloat16), positions)
    assert all(t.dtype == torch.bfloat16 and torch.isfinite(t).all() for t in tables)
    # the product of a query scale and a key scale keeps bf16 precision at every pair of far positions
    query_cos, _, key_cos, _ = (t.double() for t in tables)
    exact_query_cos, _, exact_key_cos, _ = (t.double() for t in encoding.rotary(torch.zeros(1, dtype=torch.float64), positions))
    for n, m in [(16383, 16000), (16383, 0), (9000, 8990)]:
        product = query_cos[0, n] * key_cos[0, m]
        exact = exact_query_cos[0, n] * exact_key_cos[0, m]
        torch.testing.assert_close(product, exact, atol=2e-2 * exact.abs().max().item() + 1e-30, rtol=2e-2)


def test_sandwich_is_the_inner_product_of_sinusoidal_embeddings_over_the_head_number():
    config = tiny_config("sandwich", sandwich_dim=16)
    encoding = build_position_encoding(config)
    i, j = torch.tensor([7, 30, 30, 63]), torch.tensor([7, 29, 2, 0])

    def embedding(p):  # p_k = (sin(p w_k), cos(p w_k)), w_k = 10000^(-2k/d'), k = 1..d'/2
        w = 10000.0 ** (-2 * torch.arange(1, 9, dtype=torch.float64) / 16)
        return torch.cat([torch.sin(p * w), torch.cos(p * w)])

    inner = torch.tensor([embedding(float(a)) @ embedding(float(b)) - 8 for a, b in zip(i, j)])  # 0 at distance 0
    expected = inner[None, :] / torch.arange(1, 5, dtype=torch.float64)[:, None]  # head h = 1..4 divides
    torch.testing.assert_close(bias_table(encoding, i, j).double(), expected, atol=1e-5, rtol=1e-5)
    assert not list(encoding.parameters())  # parameter-free
    distance = torch.arange(64)
    assert (bias_table(encoding, distance, torch.zeros_like(distance))[0].diff()[:10] < 0).all()  # decays at first (d' = 16: over ~10 tokens)


def test_dynamic_bias_is_the_mlp_of_the_log_distance():
    encoding = build_position_encoding(tiny_config("dynamic_bias"))
    distance = torch.arange(30)
    with torch.no_grad():
        expected = encoding.mlp(torch.log1p(distance.float())[:, None]).t()  # (heads, 30)
    torch.testing.assert_close(bias_table(encoding, distance + 3, torch.full_like(distance, 3), 40), expected)


def test_p_rope_keeps_the_highest_frequencies_and_leaves_the_rest_unrotated():
    full = build_position_encoding(tiny_config("rope", hidden_size=64))  # head_dim 16: 8 frequencies
    partial = build_position_encoding(tiny_config("rope", hidden_size=64, rope_fraction=0.25))
    torch.testing.assert_close(partial.frequencies.inv_freq[:2], full.frequencies.inv_freq[:2])
    assert (partial.frequencies.inv_freq[2:] == 0).all()
    cos, sin = partial.rotary(torch.zeros(1), torch.arange(50)[None])
    unrotated = [c for c in range(16) if c % 8 >= 2]  # rotate-half layout: channel c pairs with c + 8
    assert (cos[..., unrotated] == 1).all() and (sin[..., unrotated] == 0).all()
    linear = build_position_encoding(
        tiny_config("rope", hidden_size=64, rope_fraction=0.5, rope_scaling={"rope_type": "linear", "factor": 2.0})
    )
    assert (linear.frequencies.inv_freq[4:] == 0).all() and (linear.frequencies.inv_freq[:4] > 0).all()


def test_alibi_on_a_subset_of_heads():
    encoding = build_position_encoding(tiny_config("alibi", num_attention_heads=8, num_key_value_heads=4, alibi_num_heads=4))
    torch.testing.assert_close(encoding.slopes[:4], alibi_slopes(4))
    assert (encoding.slopes[4:] == 0).all()
    distance = torch.arange(10)
    values = bias_table(encoding, distance, torch.zeros_like(distance))
    assert (values[4:] == 0).all() and (values[:4, 1:] < 0).all()


@pytest.mark.parametrize("overrides, field", [
    ({"rope_fraction": 0.0}, "rope_fraction"),
    ({"rope_fraction": 1.5}, "rope_fraction"),
    ({"rope_fraction": 0.5, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_fraction"),
    ({"alibi_num_heads": 5}, "alibi_num_heads"),
    ({"alibi_num_heads": 0}, "alibi_num_heads"),
    ({"fire_init_length": -1}, "fire_init_length"),
    ({"sandwich_dim": 15}, "sandwich_dim"),
    ({"xpos_scale_base": 0}, "xpos_scale_base"),
])
def test_bad_encoding_options_are_refused_by_name(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config("rope", **overrides)


@pytest.mark.parametrize("name", ENCODINGS)
def test_every_builtin_describes_itself(name):
    cls = position_encoding_class(name)
    assert cls.description != PositionEncoding.description  # not the base class default
    assert cls.citation and cls.formula and cls.color
    profile = build_position_encoding(tiny_config(name)).distance_profile(16)
    assert profile["curves"] and profile["ylabel"]
    assert all(len(values) <= 17 and torch.isfinite(values).all() for _, values in profile["curves"])
