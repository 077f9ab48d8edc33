"""eager (the reference), sdpa and flex_attention agree for every encoding, padded batches included."""

import pytest
import torch
from transformers.utils import is_torch_flex_attn_available

from hf_posenc.model.encodings_hf_posenc import position_encoding_class
from tests.conftest import BIAS_ENCODINGS, random_tokens, tiny_model

BACKENDS = ["sdpa", pytest.param("flex_attention", marks=pytest.mark.skipif(
    not is_torch_flex_attn_available(), reason="this torch has no FlexAttention"))]


def left_padded_batch():
    ids = random_tokens(batch=3, length=12)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    mask[2, 9:] = 0  # right padding
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_eager(encoding, backend):
    if backend == "flex_attention" and not position_encoding_class(encoding).supports_flex_attention:
        pytest.skip(f"{encoding} refuses flex_attention (tested in its own tests)")
    model = tiny_model(encoding, attn_implementation="eager")
    ids, mask = left_padded_batch()
    with torch.no_grad():
        reference = model(ids, attention_mask=mask).logits
        reference_unpadded = model(ids[1:2]).logits
        model.set_attn_implementation(backend)
        fast = model(ids, attention_mask=mask).logits
        fast_unpadded = model(ids[1:2]).logits
    real = mask.bool()  # padding positions hold arbitrary values in every backend
    torch.testing.assert_close(fast[real], reference[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_unpadded, reference_unpadded, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("encoding", BIAS_ENCODINGS)
def test_sdpa_gradients_agree_with_eager(encoding):
    ids, mask = left_padded_batch()
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, 5] = -100  # predicted from a padding position, whose output is arbitrary in every backend
    grads = {}
    for backend in ("eager", "sdpa"):
        model = tiny_model(encoding, attn_implementation=backend).train()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads[backend] = [p.grad for p in model.parameters()]
    for eager_grad, sdpa_grad in zip(grads["eager"], grads["sdpa"]):
        torch.testing.assert_close(sdpa_grad, eager_grad, atol=1e-5, rtol=1e-4)


def test_bias_on_sdpa_is_broadcast_over_the_batch_without_padding():
    """Without padding the folded ALiBi mask is one (1, heads, q, kv) tensor, not one per example."""
    model = tiny_model("alibi", attn_implementation="sdpa")
    seen = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args: seen.append(args[1].shape), with_kwargs=False
    )
    with torch.no_grad():
        model(random_tokens(batch=4, length=10))
    hook.remove()
    assert seen == [torch.Size([1, 4, 10, 10])]


@pytest.mark.skipif(not is_torch_flex_attn_available(), reason="this torch has no FlexAttention")
def test_flex_uses_a_score_mod_not_a_dense_bias():
    model = tiny_model("t5_bias", attn_implementation="flex_attention")
    seen = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda module, args: seen.append((type(args[1]).__name__, args[3] is not None))
    )
    with torch.no_grad():
        model(random_tokens(batch=2, length=10))
    hook.remove()
    assert seen == [("BlockMask", True)]
