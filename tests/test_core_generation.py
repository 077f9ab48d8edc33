"""Cache and generation: incremental decoding == full forward, generate with and without cache agree,
left-padded rows == unpadded rows, both cache keywords, lengths beyond max_position_embeddings."""

import warnings

import pytest
import torch
from transformers import DynamicCache, GenerationConfig

from hf_posenc.model.modeling_hf_posenc import CACHE_KWARG
from tests.conftest import EXTRAPOLATING_ENCODINGS, cache_of, random_tokens, tiny_model


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_incremental_decoding_matches_full_forward(encoding, backend):
    model = tiny_model(encoding, attn_implementation=backend)
    ids = random_tokens(batch=2, length=14)
    with torch.no_grad():
        full = model(ids).logits
        prefill = model(ids[:, :8], use_cache=True)
        cache = cache_of(prefill)
        pieces = [prefill.logits]
        for start, stop in ((8, 9), (9, 12), (12, 13), (13, 14)):  # single tokens and chunks
            step = model(ids[:, start:stop], cache=cache, use_cache=True)
            cache = cache_of(step)
            pieces.append(step.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_both_cache_keywords_are_accepted(encoding):
    model = tiny_model(encoding)
    ids = random_tokens(batch=1, length=6)
    with torch.no_grad():
        full = model(ids).logits
        for keyword in ("cache", "past_key_values"):
            cache = DynamicCache(config=model.config)
            model(ids[:, :5], use_cache=True, **{keyword: cache})
            step = model(ids[:, 5:], use_cache=True, **{keyword: cache}).logits
            torch.testing.assert_close(step, full[:, 5:], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="Both `past_key_values` and `cache` are set"):
            model(ids, cache=DynamicCache(config=model.config), past_key_values=DynamicCache(config=model.config))


@pytest.mark.skipif(CACHE_KWARG != "cache", reason="before transformers 5.24 `past_key_values` is the current name")
def test_old_cache_keyword_warns_like_llama():
    model = tiny_model("rope")
    with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
        model(random_tokens(batch=1, length=4), past_key_values=DynamicCache(config=model.config), use_cache=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(random_tokens(batch=1, length=4), cache=DynamicCache(config=model.config), use_cache=True)


def greedy(model, ids, mask=None, **kwargs):
    # min_new_tokens: an untrained model may emit the eos token by chance (cope does at seed 0)
    config = GenerationConfig(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    return model.generate(ids, attention_mask=mask, generation_config=config, **kwargs)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_generate_with_and_without_cache_agree(encoding, backend):
    model = tiny_model(encoding, attn_implementation=backend)
    ids = random_tokens(batch=2, length=6)
    with_cache = greedy(model, ids, use_cache=True)
    without_cache = greedy(model, ids, use_cache=False)
    assert with_cache.shape == (2, 14)
    assert torch.equal(with_cache, without_cache)


def test_generate_with_static_cache(encoding):
    model = tiny_model(encoding, attn_implementation="sdpa")
    ids = random_tokens(batch=2, length=6)
    assert torch.equal(greedy(model, ids, cache_implementation="static"), greedy(model, ids))


def test_left_padded_rows_match_unpadded_rows(encoding):
    model = tiny_model(encoding, attn_implementation="sdpa")
    short, long = random_tokens(batch=1, length=5, seed=3), random_tokens(batch=1, length=9, seed=4)
    ids = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1), long])
    mask = (torch.arange(9) >= torch.tensor([[4], [0]])).long()
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(batched[0, 4:], model(short).logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[1], model(long).logits[0], atol=1e-5, rtol=1e-5)
    generated = greedy(model, ids, mask)
    # a single row stops at the config's eos token; in the batch that row is padded after it instead
    alone_short, alone_long = greedy(model, short)[0, 5:], greedy(model, long)[0, 9:]
    assert torch.equal(generated[0, 9 : 9 + len(alone_short)], alone_short)
    assert torch.equal(generated[1, 9 : 9 + len(alone_long)], alone_long)


@pytest.mark.parametrize("encoding", EXTRAPOLATING_ENCODINGS)
def test_generation_continues_beyond_max_position_embeddings(encoding):
    model = tiny_model(encoding, max_position_embeddings=8)
    assert greedy(model, random_tokens(batch=1, length=6)).shape == (1, 14)


def test_learned_generation_beyond_its_table_raises_clearly():
    model = tiny_model("learned", max_position_embeddings=8)
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        greedy(model, random_tokens(batch=1, length=6))
