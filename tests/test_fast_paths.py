"""Every fast path computes what eager attention computes (float32 on CPU); GPU-only checks skip without CUDA.

Covers what the speed work changed or relies on: RoPE bit-identical to Llama's, SDPA's implicit causal mask
(no mask tensor, also under torch.compile), FlexAttention score_mods for built-in and registered bias
encodings (run here through the uncompiled reference kernel: compiling FlexAttention on CPU takes minutes),
and a torch.compile'd training step for every encoding.
"""

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
from transformers.utils import is_torch_flex_attn_available

import hf_posenc.model.modeling_hf_posenc as modeling
from hf_posenc import PositionEncoding, register_position_encoding, unregister_position_encoding
from hf_posenc.bench.agreement import check_forward, run_agreement
from hf_posenc.bench.models import encoding_has_score_bias, resolve_attn_implementation
from tests.conftest import BIAS_ENCODINGS, ENCODINGS, random_tokens, tiny_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
needs_flex = pytest.mark.skipif(not is_torch_flex_attn_available(), reason="this torch has no FlexAttention")


def rotary_inputs(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(2, 4, 9, 16, generator=generator).to(dtype)
    key = torch.randn(2, 2, 9, 16, generator=generator).to(dtype)
    angles = torch.randn(2, 9, 8, generator=generator)
    table = torch.cat((angles, angles), dim=-1)
    return query, key, table.cos().to(dtype), table.sin().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_is_llamas_to_the_bit(dtype):
    query, key, cos, sin = rotary_inputs(dtype)
    ours = modeling.apply_rotary(query, key, cos, sin)
    llama = apply_rotary_pos_emb(query, key, cos, sin)
    assert torch.equal(ours[0], llama[0]) and torch.equal(ours[1], llama[1])


def test_rotary_gradients_are_llamas():
    query, key, cos, sin = rotary_inputs(torch.float32)
    grads = []
    for rotate in (modeling.apply_rotary, apply_rotary_pos_emb):
        q, k = query.clone().requires_grad_(), key.clone().requires_grad_()
        rotated_q, rotated_k = rotate(q, k, cos, sin)
        (rotated_q.square().sum() + rotated_k.sum()).backward()
        grads.append((q.grad, k.grad))
    torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)


def test_prepare_rotary_folds_the_sign_once():
    query, _, cos, sin = rotary_inputs(torch.float32)
    prepared_cos, signed_sin = modeling.prepare_rotary(cos, sin)
    assert prepared_cos.shape == signed_sin.shape == (2, 1, 9, 16)  # broadcast over heads, shared by layers
    expected = query * cos.unsqueeze(1) + modeling.rotate_half(query) * sin.unsqueeze(1)
    assert torch.equal(modeling.rotate(query, prepared_cos, signed_sin), expected)


def attention_masks_seen(model, *args, **kwargs):
    seen = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    try:
        model(*args, **kwargs)
    finally:
        hook.remove()
    return seen


def loss_and_grads(model, ids, **kwargs):
    model.train().zero_grad(set_to_none=True)
    loss = model(ids, labels=ids, **kwargs).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sdpa_training_step_without_padding_matches_eager(encoding):
    ids = random_tokens(batch=2, length=20)
    eager = tiny_model(encoding, "eager")
    sdpa = tiny_model(encoding, "sdpa")
    eager_loss, eager_grads = loss_and_grads(eager, ids)
    sdpa_loss, sdpa_grads = loss_and_grads(sdpa, ids)
    torch.testing.assert_close(sdpa_loss, eager_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa_grads, eager_grads, atol=1e-5, rtol=1e-4)
    (mask,) = attention_masks_seen(sdpa.eval(), ids)
    if encoding_has_score_bias(encoding):
        assert mask.shape == (1, 4, 20, 20)  # one per-head bias, broadcast over the batch
    else:
        assert mask is None  # SDPA's is_causal: the flash kernel, no mask tensor


def test_caller_position_ids_still_reach_the_mask_builder():
    """Two packed sequences in one row: caller position_ids restart, so the mask must separate them."""
    ids = random_tokens(batch=1, length=12)
    packed = torch.cat((torch.arange(5), torch.arange(7))).unsqueeze(0)
    eager, sdpa = tiny_model("rope", "eager"), tiny_model("rope", "sdpa")
    with torch.no_grad():  # no cache, as in training: transformers looks for packing only then
        packed_logits = sdpa(ids, position_ids=packed, use_cache=False).logits
        torch.testing.assert_close(
            packed_logits, eager(ids, position_ids=packed, use_cache=False).logits, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(packed_logits[:, 5:], eager(ids[:, 5:]).logits, atol=1e-5, rtol=1e-5)
        assert attention_masks_seen(sdpa, ids, position_ids=packed, use_cache=False)[0] is not None


class SdpaSpy:
    """A torch.compile backend that records the mask arguments of every SDPA call in the captured graph."""

    def __init__(self):
        self.calls = []

    def __call__(self, graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            if "scaled_dot_product_attention" in str(node.target):
                self.calls.append((node.kwargs.get("attn_mask"), node.kwargs.get("is_causal")))
        return graph_module.forward


def test_compiled_sdpa_keeps_the_flash_path():
    """Under torch.compile no mask tensor reaches SDPA (transformers 5.17 would build a dense one)."""
    torch._dynamo.reset()
    spy = SdpaSpy()
    model = tiny_model("rope", "sdpa").train()
    ids = random_tokens(batch=2, length=16)
    torch.compile(model, backend=spy, fullgraph=True)(ids, labels=ids)
    assert spy.calls and all(mask is None and is_causal for mask, is_causal in spy.calls)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_compiled_training_step_matches_eager(encoding):
    """torch.compile(fullgraph=True) traces the whole training forward; loss and gradients are eager's.

    The Dynamo-only backend keeps this fast on CPU; the AOT-autograd test below and the GPU script cover
    the real backends.
    """
    torch._dynamo.reset()
    ids = random_tokens(batch=2, length=16)
    model = tiny_model(encoding, "sdpa")
    eager_loss, eager_grads = loss_and_grads(model, ids)
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(model, backend="eager", fullgraph=True), ids)
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(compiled_grads, eager_grads, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("encoding", ["rope"])
def test_aot_autograd_training_step_matches_eager(encoding):
    """AOT autograd (what inductor consumes) through the in-place RoPE updates."""
    torch._dynamo.reset()
    ids = random_tokens(batch=2, length=16)
    model = tiny_model(encoding, "sdpa")
    eager_loss, eager_grads = loss_and_grads(model, ids)
    compiled_loss, compiled_grads = loss_and_grads(torch.compile(model, backend="aot_eager", fullgraph=True), ids)
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(compiled_grads, eager_grads, atol=1e-6, rtol=1e-5)


class DistanceDecay(PositionEncoding):
    """A user-registered bias encoding: -(head + 1) / 8 * |q - k|, nothing else."""

    def score_bias(self, key_length, device, dtype):
        def bias(head, query_pos, key_pos):
            return -(head + 1).float() / 8.0 * (query_pos - key_pos).abs().float()

        return bias


@pytest.fixture
def registered_bias_encoding():
    register_position_encoding("test_distance_decay", DistanceDecay, overwrite=True)
    yield "test_distance_decay"
    unregister_position_encoding("test_distance_decay")


@pytest.fixture
def uncompiled_flex(monkeypatch):
    """FlexAttention through torch's reference (uncompiled) kernel, block masks built without compiling."""
    import transformers.integrations.flex_attention as flex_integration
    import transformers.masking_utils as masking_utils
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def reference(query, key, value, training=False, **kwargs):
        assert "kernel_options" not in kwargs  # Triton block sizes are for CUDA only
        return flex_attention(query, key, value, **kwargs)

    def uncompiled_block_mask(*args, **kwargs):
        return create_block_mask(*args, **{**kwargs, "_compile": False})

    def transformers_reference(query, key, value, training=False, **kwargs):  # layers without a score bias
        return flex_attention(query, key, value, **kwargs)

    monkeypatch.setattr(modeling, "compile_friendly_flex_attention", reference)
    monkeypatch.setattr(flex_integration, "compile_friendly_flex_attention", transformers_reference)
    monkeypatch.setattr(masking_utils, "create_block_mask", uncompiled_block_mask)


def padded_batch():
    ids = random_tokens(batch=3, length=12)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, 9:] = 0
    return ids.masked_fill(mask == 0, 0), mask


@needs_flex
@pytest.mark.parametrize("encoding", [*BIAS_ENCODINGS, "registered"])
def test_flex_score_mod_matches_eager(encoding, registered_bias_encoding, uncompiled_flex):
    encoding = registered_bias_encoding if encoding == "registered" else encoding
    ids, mask = padded_batch()
    eager, flex = tiny_model(encoding, "eager"), tiny_model(encoding, "flex_attention")
    with torch.no_grad():
        real = mask.bool()
        torch.testing.assert_close(
            flex(ids, attention_mask=mask).logits[real], eager(ids, attention_mask=mask).logits[real], atol=1e-5, rtol=1e-5
        )
        masks = attention_masks_seen(flex, ids[1:2])
        assert type(masks[0]).__name__ == "BlockMask"  # no dense bias anywhere
        # decoding with the cache: the score_mod is offset by the cache length
        full = eager(ids[1:2]).logits
        output = flex(ids[1:2, :8], use_cache=True)
        cache = output.cache if getattr(output, "cache", None) is not None else output.past_key_values
        steps = [output.logits[:, -1]]
        for index in range(8, 11):
            output = flex(ids[1:2, index : index + 1], past_key_values=cache, use_cache=True)
            steps.append(output.logits[:, -1])
        torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 7:11], atol=1e-5, rtol=1e-5)


def test_registered_bias_encoding_on_sdpa_matches_eager(registered_bias_encoding):
    ids, mask = padded_batch()
    eager, sdpa = tiny_model(registered_bias_encoding, "eager"), tiny_model(registered_bias_encoding, "sdpa")
    with torch.no_grad():
        real = mask.bool()
        torch.testing.assert_close(
            sdpa(ids, attention_mask=mask).logits[real], eager(ids, attention_mask=mask).logits[real], atol=1e-5, rtol=1e-5
        )


def test_auto_attention_choice_is_explicit(registered_bias_encoding):
    """`--attn auto`: FlexAttention for bias encodings when training on CUDA, SDPA otherwise; never for Bloom."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    shape = tiny_model("rope").config.to_dict()
    shape = {k: shape[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "num_key_value_heads", "max_position_embeddings")}
    for name in ("alibi", "t5_bias", registered_bias_encoding):
        assert resolve_attn_implementation("auto", f"hf_posenc:{name}", cuda, "train", shape) == "flex_attention"
        assert resolve_attn_implementation("auto", f"hf_posenc:{name}", cuda, "scaling", shape) == "flex_attention"
        assert resolve_attn_implementation("auto", f"hf_posenc:{name}", cuda, "decode", shape) == "sdpa"
        assert resolve_attn_implementation("auto", f"hf_posenc:{name}", cpu, "train", shape) == "sdpa"
        assert resolve_attn_implementation("sdpa", f"hf_posenc:{name}", cuda, "train", shape) == "sdpa"  # as asked
    for name in ("rope", "nope", "learned", "sinusoidal"):
        assert resolve_attn_implementation("auto", f"hf_posenc:{name}", cuda, "train", shape) == "sdpa"
    assert resolve_attn_implementation("auto", "hf:llama", cuda, "train", shape) == "sdpa"
    assert resolve_attn_implementation("sdpa", "hf:bloom", cuda, "train", shape) == "eager"


def test_agreement_checks_pass_on_cpu_and_catch_a_broken_fast_path(monkeypatch):
    records = run_agreement(["alibi"], torch.device("cpu"), torch.float32, backends=("sdpa",), length=24, log=lambda _: None)
    assert {r["check"] for r in records} == {"forward", "forward_padded", "train_loss", "train_grads", "decode_with_cache"}
    assert all(r["ok"] for r in records)
    # an SDPA that drops the mask (and with it the ALiBi bias) must fail them
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", lambda m, q, k, v, mask, **kw: sdpa(m, q, k, v, None, **kw))
    broken = check_forward("alibi", "sdpa", torch.device("cpu"), torch.float32, length=24)
    assert [r["ok"] for r in broken] == [False, False]


def test_agreement_checks_every_part_of_a_per_layer_pattern():
    # the checks' model is 2 layers deep; a 4-layer pattern must get its whole period (its nope layer included)
    records = run_agreement(["rope+rope+rope+nope"], torch.device("cpu"), torch.float32, backends=("sdpa",), length=16,
                            log=lambda _: None)
    assert records and all(r["ok"] for r in records), records


@needs_cuda
@needs_flex
def test_bf16_fast_paths_agree_on_gpu():
    records = run_agreement(
        ["rope", "alibi", "t5_bias"], torch.device("cuda"), torch.bfloat16, compile_encodings=["alibi"], log=print
    )
    failed = [r for r in records if r["ok"] is not True]
    assert not failed, failed
