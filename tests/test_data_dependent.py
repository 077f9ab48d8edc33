"""Data-dependent encodings (fox, cope): the paper formulas, every supported backend, and the cache.

References are written here from the papers' formulas with explicit loops, independent of the model code.
"""

import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask
from transformers import DynamicCache
from transformers.utils import is_torch_flex_attn_available

from hf_posenc import PosEncConfig, register_position_encoding, unregister_position_encoding
from hf_posenc.model import modeling_hf_posenc as modeling
from hf_posenc.model.data_dependent_hf_posenc import DataDependentBias
from hf_posenc.model.encodings_hf_posenc import PositionEncoding
from tests.conftest import cache_of, random_tokens, tiny_config, tiny_model
from tests.test_core_remote_code import load_without_the_package

DATA_DEPENDENT = ["fox", "cope"]
DENSE = ["eager", "sdpa"]
needs_flex = pytest.mark.skipif(not is_torch_flex_attn_available(), reason="this torch has no FlexAttention")


def reference_attention(attention, x, bias_of):
    """softmax(q k^T / sqrt(d) + bias, causal) v for one layer, head by head, with explicit loops for the bias.

    ``bias_of(head, i, j, q, k)`` is the paper's formula for the bias of query i on key j. Returns (batch, q, hidden).
    """
    batch, length, _ = x.shape
    heads, head_dim = attention.config.num_attention_heads, attention.head_dim
    groups = attention.num_key_value_groups
    q = attention.q_proj(x).view(batch, length, heads, head_dim)
    k = attention.k_proj(x).view(batch, length, -1, head_dim)
    v = attention.v_proj(x).view(batch, length, -1, head_dim)
    out = torch.zeros(batch, length, heads, head_dim)
    for b in range(batch):
        for h in range(heads):
            qh, kh, vh = q[b, :, h], k[b, :, h // groups], v[b, :, h // groups]
            for i in range(length):
                scores = torch.stack(
                    [qh[i] @ kh[j] / math.sqrt(head_dim) + bias_of(b, h, i, j, qh, kh) for j in range(i + 1)]
                )
                out[b, i, h] = torch.softmax(scores, dim=0) @ vh[: i + 1]
    return attention.o_proj(out.reshape(batch, length, -1))


def fox_bias_of(attention, x):
    """FoX: bias(i, j) = sum_{t in (j, i]} log sigmoid(w_h . x_t + b_h)."""
    gate = attention.data_dependent_bias.forget_gate
    log_f = torch.nn.functional.logsigmoid(x @ gate.weight.t() + gate.bias)  # (batch, length, heads)
    return lambda b, h, i, j, q, k: sum((log_f[b, t, h] for t in range(j + 1, i + 1)), torch.tensor(0.0))


def cope_bias_of(attention, x):
    """CoPE: g_it = sigmoid(q_i . k_t / sqrt(d)), p_ij = sum_{t=j..i} g_it, bias = q_i . e[p] (interpolated)."""
    table = attention.data_dependent_bias.position_embeddings.weight
    largest = table.shape[0] - 1

    def bias(b, h, i, j, q, k):
        p = sum(torch.sigmoid(q[i] @ k[t] / math.sqrt(q.shape[-1])) for t in range(j, i + 1)).clamp(max=largest)
        low, high = int(math.floor(p)), int(math.ceil(p))
        embedding = table[low] + (p - low) * (table[high] - table[low])
        return q[i] @ embedding

    return bias


REFERENCE_BIAS = {"fox": fox_bias_of, "cope": cope_bias_of}


def trained_like(encoding, implementation="eager", **overrides):
    """A tiny model whose encoding parameters are far from their initial values, so the bias matters."""
    model = tiny_model(encoding, implementation, **overrides)
    with torch.no_grad():
        for layer in model.model.layers:
            hook = layer.self_attn.data_dependent_bias
            for parameter in hook.parameters():
                parameter.normal_(0, 1.0, generator=torch.Generator().manual_seed(layer.self_attn.layer_idx))
            if encoding == "fox":
                hook.forget_gate.bias.add_(1.0)  # f around 0.7: some heads keep, some forget
    return model


@pytest.mark.parametrize("encoding", DATA_DEPENDENT)
@pytest.mark.parametrize("implementation", DENSE)
def test_layer_matches_the_paper_formula(encoding, implementation):
    model = trained_like(encoding, implementation)
    attention = model.model.layers[1].self_attn
    x = torch.randn(2, 7, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference_attention(attention, x, REFERENCE_BIAS[encoding](attention, x))
        actual, _ = attention(x, None)
    torch.testing.assert_close(actual, expected, atol=2e-5, rtol=1e-4)


@pytest.fixture
def uncompiled_flex(monkeypatch):
    """FlexAttention through torch's reference kernel (see the CPU compile note in docs/data_dependent.md)."""
    import transformers.masking_utils as masking_utils
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def reference(query, key, value, training=False, **kwargs):
        return flex_attention(query, key, value, **kwargs)

    monkeypatch.setattr(modeling, "compile_friendly_flex_attention", reference)
    monkeypatch.setattr(
        masking_utils, "create_block_mask", lambda *a, **k: create_block_mask(*a, **{**k, "_compile": False})
    )


@needs_flex
def test_fox_flex_score_mod_matches_the_formula_and_the_cache(uncompiled_flex):
    flex, eager = trained_like("fox", "flex_attention"), trained_like("fox", "eager")
    attention = flex.model.layers[0].self_attn
    x = torch.randn(2, 7, flex.config.hidden_size, generator=torch.Generator().manual_seed(3))
    ids = random_tokens(2, 12)
    with torch.no_grad():
        expected = reference_attention(attention, x, fox_bias_of(attention, x))
        causal = create_block_mask(lambda b, h, i, j: j <= i, None, None, 7, 7, device="cpu", _compile=False)
        torch.testing.assert_close(attention(x, causal)[0], expected, atol=2e-5, rtol=1e-4)
        full = eager(ids).logits
        prefix = flex(ids[:, :8], use_cache=True)
        step = flex(ids[:, 8:], cache=cache_of(prefix), use_cache=True).logits
    torch.testing.assert_close(prefix.logits, full[:, :8], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step, full[:, 8:], atol=1e-5, rtol=1e-5)


@needs_flex
def test_cope_refuses_flex_attention_clearly():
    model = tiny_model("cope", "flex_attention")
    with pytest.raises(ValueError, match=r"position_encoding='cope' cannot run with attn_implementation='flex_attention'"):
        model(random_tokens(1, 5))


@pytest.mark.parametrize("encoding", DATA_DEPENDENT)
@pytest.mark.parametrize("implementation", DENSE)
@pytest.mark.parametrize("chunk", [1, 3])
def test_incremental_decoding_matches_the_full_forward(encoding, implementation, chunk):
    model = trained_like(encoding, implementation)
    ids = random_tokens(2, 13)
    with torch.no_grad():
        full = model(ids).logits
        output = model(ids[:, :4], use_cache=True)
        pieces, cache = [output.logits], cache_of(output)
        for start in range(4, ids.shape[1], chunk):
            output = model(ids[:, start : start + chunk], cache=cache, use_cache=True)
            pieces.append(output.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_fox_keeps_its_gate_values_with_the_keys_in_the_cache():
    model = trained_like("fox")
    with torch.no_grad():
        cache = cache_of(model(random_tokens(2, 6), use_cache=True))
    groups = model.config.num_attention_heads // model.config.num_key_value_heads
    assert cache.layers[0].keys.shape[-1] == model.config.head_dim + groups  # one log f channel per query head
    assert cache.layers[0].values.shape[-1] == model.config.head_dim


@pytest.mark.parametrize("encoding", DATA_DEPENDENT)
@pytest.mark.parametrize("implementation", DENSE)
def test_left_padded_rows_match_unpadded_rows(encoding, implementation):
    model = trained_like(encoding, implementation)
    batch = random_tokens(2, 12)
    mask = torch.ones_like(batch)
    mask[0, :3] = 0
    batch = batch.masked_fill(mask == 0, 0)
    with torch.no_grad():
        logits = model(batch, attention_mask=mask).logits
        alone = model(batch[:1, 3:]).logits
        generated = model.generate(batch, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        generated_alone = model.generate(batch[:1, 3:], max_new_tokens=4, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(logits[0, 3:], alone[0], atol=1e-5, rtol=1e-5)
    # a batch of one stops at its eos; the padded batch pads that row after it
    assert generated[0, 3 : 3 + generated_alone.shape[1]].tolist() == generated_alone[0].tolist()


@pytest.mark.parametrize("encoding", DATA_DEPENDENT)
@pytest.mark.parametrize("implementation", DENSE)
def test_generate_with_and_without_cache_and_with_a_static_cache_agree(encoding, implementation):
    model = trained_like(encoding, implementation)
    ids = random_tokens(2, 5)
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(ids, **settings)
        uncached = model.generate(ids, use_cache=False, **settings)
        static = model.generate(ids, cache_implementation="static", **settings)
    assert cached.tolist() == uncached.tolist() == static.tolist()


@pytest.mark.parametrize("encoding", DATA_DEPENDENT)
def test_beam_search_reorders_the_state_with_the_cache(encoding):
    model = trained_like(encoding)
    ids = random_tokens(2, 5)
    settings = dict(max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0, output_scores=True)
    with torch.no_grad():
        cached = model.generate(ids, return_dict_in_generate=True, **settings)
        uncached = model.generate(ids, use_cache=False, return_dict_in_generate=True, **settings)
    assert cached.sequences.tolist() == uncached.sequences.tolist()
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoding", DATA_DEPENDENT)
def test_cropped_and_reset_caches_continue_correctly(encoding):
    model = trained_like(encoding)
    ids, other = random_tokens(2, 10), random_tokens(2, 10, seed=7)
    with torch.no_grad():
        full = model(ids).logits
        cache = DynamicCache(config=model.config)
        model(torch.cat([ids[:, :6], other[:, :4]], dim=1), cache=cache, use_cache=True)
        cache.crop(-4)  # drop the 4 tokens of the other text: its gate values must go too
        cropped = model(ids[:, 6:], cache=cache, use_cache=True).logits
        cache.reset()
        fresh = model(other, cache=cache, use_cache=True).logits
    torch.testing.assert_close(cropped, full[:, 6:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fresh, model(other).logits, atol=1e-5, rtol=1e-5)


def test_static_cache_crop_and_reset_keep_fox_correct():
    from transformers import StaticCache

    model = trained_like("fox")
    ids, other = random_tokens(1, 10), random_tokens(1, 10, seed=7)
    with torch.no_grad():
        full = model(ids).logits
        cache = StaticCache(config=model.config, max_cache_len=16)
        model(torch.cat([ids[:, :6], other[:, :4]], dim=1), cache=cache, use_cache=True)
        cache.crop(-4)
        torch.testing.assert_close(model(ids[:, 6:], cache=cache, use_cache=True).logits, full[:, 6:], atol=1e-5, rtol=1e-5)
        cache.reset()
        torch.testing.assert_close(model(other, cache=cache, use_cache=True).logits, model(other).logits, atol=1e-5, rtol=1e-5)


def test_fox_stays_exact_in_bfloat16_over_long_contexts():
    """The cache keeps per-token log f (bounded), never the running sum c (which grows with the length)."""
    model = trained_like("fox").to(torch.bfloat16)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.data_dependent_bias.forget_gate.bias.fill_(-1.0)  # log f near -1.3: |c| in the hundreds
        ids = random_tokens(1, 300)
        full = model(ids).logits
        output = model(ids[:, :290], use_cache=True)
        step = model(ids[:, 290:], cache=cache_of(output), use_cache=True).logits
    torch.testing.assert_close(step.float(), full[:, 290:].float(), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("encoding", DATA_DEPENDENT)
def test_training_updates_the_encoding_parameters(encoding):
    model = tiny_model(encoding).train()
    ids = random_tokens(4, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(ids, labels=ids).loss
        loss.backward()
        hook = model.model.layers[0].self_attn.data_dependent_bias
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hook.parameters())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_cope_max_positions_is_validated():
    with pytest.raises(ValueError, match="cope_max_positions must be an integer >= 2, got 1"):
        tiny_config("cope", cope_max_positions=1)
    config = tiny_config("cope", cope_max_positions=5)
    assert PosEncConfig.from_dict(config.to_dict()).cope_max_positions == 5


class RecencyBias(DataDependentBias):
    """A user's data-dependent encoding: each key says how strongly it wants to be attended, per head."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.salience = torch.nn.Linear(config.hidden_size, config.num_attention_heads)

    def key_state(self, hidden_states):
        return self.salience(hidden_states).float().unsqueeze(-1)  # (batch, q, heads, 1)

    def dense_bias(self, query, key, state, query_pos):
        return state[..., 0][:, :, None, :].expand(-1, -1, len(query_pos), -1)  # (batch, heads, q, kv)


class SalienceEncoding(PositionEncoding):
    @classmethod
    def data_dependent_bias(cls, config, layer_idx):
        return RecencyBias(config, layer_idx)


@pytest.fixture
def salience_encoding():
    register_position_encoding("test_salience", SalienceEncoding, overwrite=True)
    yield "test_salience"
    unregister_position_encoding("test_salience")


def test_a_user_registers_a_data_dependent_encoding(salience_encoding, tmp_path):
    model = trained_like(salience_encoding, "sdpa")
    ids = random_tokens(2, 9)
    with torch.no_grad():
        full = model(ids).logits
        output = model(ids[:, :5], use_cache=True)
        step = model(ids[:, 5:], cache=cache_of(output), use_cache=True).logits
        cached = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
        uncached = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0, use_cache=False)
    torch.testing.assert_close(step, full[:, 5:], atol=1e-5, rtol=1e-5)
    assert cached.tolist() == uncached.tolist()
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path, attn_implementation="sdpa")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, full)


def test_saved_folders_load_as_remote_code_without_the_package(tmp_path):
    ids = random_tokens(batch=2, length=7)
    folders, expected = [], {}
    for encoding in DATA_DEPENDENT:
        model = trained_like(encoding)
        folder = tmp_path / encoding
        model.save_pretrained(folder)
        assert (folder / "data_dependent_hf_posenc.py").is_file()
        folders.append(str(folder))
        with torch.no_grad():
            expected[encoding] = (
                model(ids).logits,
                model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0).tolist(),
            )
    loaded = load_without_the_package(folders, ids, tmp_path)
    for encoding, (logits, generated) in expected.items():
        torch.testing.assert_close(torch.tensor(loaded[encoding]["logits"]), logits, atol=1e-5, rtol=1e-5)
        assert loaded[encoding]["generated"] == generated


def test_figures_show_what_the_encodings_compute_on_text(tmp_path):
    from hf_posenc.study.figures import data_dependent_by_distance, draw_figures
    from tests.helpers_length_generalization import write_text_folder
    from tests.helpers_model_dir import build_model_dir

    model = trained_like("fox")
    windows = random_tokens(3, 10)
    profile = data_dependent_by_distance(model, windows, batch_size=2)
    # FoX's mean bias at distance d is the mean over queries of sum of log f over the d tokens in between
    assert profile["layers"].shape == (2, 4, 10)
    assert torch.all(profile["layers"][..., 0] == 0) and torch.all(profile["layers"][..., 1:] < 0)
    assert torch.all(profile["layers"].diff(dim=-1) < 0)  # more tokens in between: more forgetting
    cope = data_dependent_by_distance(trained_like("cope"), windows)
    assert cope["label"] == "contextual position p_ij"
    assert torch.all(cope["layers"].diff(dim=-1) > 0)  # positions grow with the distance
    assert data_dependent_by_distance(tiny_model("rope"), windows) is None

    models = tmp_path / "models"
    for encoding in ("fox", "cope"):
        build_model_dir(models / encoding, encoding)
    data = write_text_folder(tmp_path / "text")
    written = draw_figures(tmp_path / "figures", [models], windows=2, data=str(data), show_progress=False)
    assert written[-1].name == "data_dependent_by_distance.png" and written[-1].stat().st_size > 10_000
