"""Score biases come from query and key *positions* (position_ids, cached keys included), not from indices:
packed sequences whose positions restart, and gapped custom positions, get the right bias on every backend."""

import pytest
import torch
from transformers.utils import is_torch_flex_attn_available

from tests.conftest import BIAS_ENCODINGS, ENCODINGS, cache_of, random_tokens, tiny_model

BACKENDS = ["eager", "sdpa"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_documents_match_each_document_alone(encoding, backend):
    """Two documents in one row, positions restarting at the second: each scores as if it were alone.

    As in transformers, restarting positions mark packed documents when there is no cache (training)."""
    model = tiny_model(encoding, attn_implementation=backend)
    first, second = random_tokens(batch=1, length=5, seed=5), random_tokens(batch=1, length=7, seed=6)
    packed = torch.cat([first, second], dim=1)
    position_ids = torch.cat([torch.arange(5), torch.arange(7)])[None]
    with torch.no_grad():
        logits = model(packed, position_ids=position_ids, use_cache=False).logits
        torch.testing.assert_close(logits[:, :5], model(first).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[:, 5:], model(second).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoding", BIAS_ENCODINGS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gapped_positions_change_the_bias_and_decode_incrementally(encoding, backend):
    """Positions 0, 3, 6, ...: the bias sees the gaps (not the indices), and decoding with the cache, which must
    remember its keys' positions, equals the full forward."""
    model = tiny_model(encoding, attn_implementation=backend)
    ids = random_tokens(batch=2, length=10)
    gapped = (torch.arange(10) * 3)[None]
    with torch.no_grad():
        full = model(ids, position_ids=gapped).logits
        assert (full - model(ids).logits).abs().max() > 1e-6  # positions, not indices, reach the bias (fire and
        # dynamic_bias start from a near-zero MLP, so their effect at initialization is small but far above rounding)
        prefill = model(ids[:, :6], position_ids=gapped[:, :6], use_cache=True)
        cache, pieces = cache_of(prefill), [prefill.logits]
        for start, stop in ((6, 7), (7, 10)):
            step = model(ids[:, start:stop], position_ids=gapped[:, start:stop], cache=cache, use_cache=True)
            cache = cache_of(step)
            pieces.append(step.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not is_torch_flex_attn_available(), reason="this torch has no FlexAttention")
@pytest.mark.parametrize("encoding", ["alibi", "t5_bias"])
def test_flex_attention_reads_custom_positions(encoding):
    model = tiny_model(encoding, attn_implementation="eager")
    ids = random_tokens(batch=2, length=10)
    gapped = torch.stack([torch.arange(10) * 3, torch.arange(10) * 2])  # a different position row per example
    with torch.no_grad():
        reference = model(ids, position_ids=gapped).logits
        model.set_attn_implementation("flex_attention")
        torch.testing.assert_close(model(ids, position_ids=gapped).logits, reference, atol=1e-4, rtol=1e-4)


def test_shared_positions_keep_the_bias_broadcast_over_the_batch():
    """No per-example L x L tensor when the batch shares its positions (the SDPA fast path)."""
    model = tiny_model("alibi", attn_implementation="sdpa")
    seen = []
    handle = model.model.layers[0].self_attn.register_forward_pre_hook(lambda m, a: seen.append(a[1].shape))
    with torch.no_grad():
        model(random_tokens(batch=3, length=8), position_ids=torch.arange(8)[None])
    handle.remove()
    assert seen == [torch.Size([1, 4, 8, 8])]
