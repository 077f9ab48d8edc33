"""The model API for all six encodings: shapes, gradients, causality, save / load, heads, errors."""

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_posenc import PosEncForCausalLM, PosEncForSequenceClassification, PosEncModel
from tests.conftest import EXTRAPOLATING_ENCODINGS, random_tokens, tiny_config, tiny_model


def test_shapes(encoding):
    model = tiny_model(encoding)
    ids = random_tokens(batch=3, length=10)
    out = model(ids, output_hidden_states=True, output_attentions=True)
    assert out.logits.shape == (3, 10, 101)
    layers = model.config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1 and out.hidden_states[-1].shape == (3, 10, 32)
    assert len(out.attentions) == layers and out.attentions[0].shape == (3, 4, 10, 10)
    # eager attention rows are distributions over past keys only
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(3, 4, 10))
    assert out.attentions[0].triu(diagonal=1).abs().max() == 0


def test_backward_reaches_every_parameter(encoding):
    model = tiny_model(encoding).train()
    ids = random_tokens()
    loss = model(ids, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert without_grad == []


def test_future_tokens_never_change_past_logits(encoding):
    model = tiny_model(encoding)
    ids = random_tokens(batch=1, length=12)
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 7) % 101
    with torch.no_grad():
        original, edited = model(ids).logits, model(changed).logits
    torch.testing.assert_close(original[:, :8], edited[:, :8], atol=1e-6, rtol=1e-6)
    assert (original[:, 8:] - edited[:, 8:]).abs().max() > 1e-4


def test_encodings_make_the_model_order_aware(encoding):
    """Swapping two early tokens changes later logits for every encoding (NoPE via the causal mask)."""
    model = tiny_model(encoding)
    ids = random_tokens(batch=1, length=10)
    swapped = ids.clone()
    swapped[0, [1, 2]] = swapped[0, [2, 1]]
    with torch.no_grad():
        assert (model(ids).logits[:, -1] - model(swapped).logits[:, -1]).abs().max() > 1e-5


def test_save_and_from_pretrained_round_trip(tmp_path, encoding):
    model = tiny_model(encoding, tie_word_embeddings=(encoding == "nope"))
    ids = random_tokens()
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert isinstance(loaded, PosEncForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected)
    # deterministic buffers (RoPE frequencies, ALiBi slopes) are recomputed, not left uninitialized
    for (name, buffer), (_, loaded_buffer) in zip(model.named_buffers(), loaded.named_buffers()):
        torch.testing.assert_close(loaded_buffer, buffer, msg=name)


def test_tied_embeddings_share_storage():
    model = tiny_model("rope", tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    untied = tiny_model("rope", tie_word_embeddings=False)
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()


def test_auto_classes_are_registered():
    config = tiny_config("alibi")
    assert isinstance(AutoModel.from_config(config), PosEncModel)
    assert isinstance(AutoModelForCausalLM.from_config(config), PosEncForCausalLM)
    assert isinstance(AutoModelForSequenceClassification.from_config(config), PosEncForSequenceClassification)


def test_sequence_classification_pools_the_last_real_token(encoding):
    torch.manual_seed(0)
    model = PosEncForSequenceClassification(tiny_config(encoding, num_labels=3)).eval()
    ids = random_tokens(batch=2, length=8)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids[:1]], dim=1)  # left padding
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = model(ids[:1]).logits
        left_padded = model(padded, attention_mask=mask).logits
    torch.testing.assert_close(plain, left_padded, atol=1e-5, rtol=1e-5)
    out = model(ids, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(encoding, use_reentrant):
    """Both checkpointing modes, every encoding: a learned bias shared by the layers (t5_bias) included."""
    ids = random_tokens()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(encoding).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        model(ids, labels=ids).loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_input_ids_xor_inputs_embeds():
    model = tiny_model()
    ids = random_tokens()
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(ids, inputs_embeds=model.model.embed_tokens(ids))
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=model.model.embed_tokens(ids)).logits, model(ids).logits)


def test_learned_refuses_positions_beyond_its_table():
    model = tiny_model("learned", max_position_embeddings=16)
    model(random_tokens(length=16))
    with pytest.raises(ValueError, match=r"learned.*max_position_embeddings=16.*position 16"):
        model(random_tokens(length=17))


@pytest.mark.parametrize("encoding", EXTRAPOLATING_ENCODINGS)
def test_other_encodings_run_beyond_max_position_embeddings(encoding):
    model = tiny_model(encoding, max_position_embeddings=16)
    with torch.no_grad():
        logits = model(random_tokens(length=40)).logits
    assert torch.isfinite(logits).all()


def test_bias_encodings_refuse_backends_without_score_bias():
    model = tiny_model("alibi")
    model.config._attn_implementation = "paged|sdpa"  # a backend that cannot take a float bias
    with pytest.raises(ValueError, match="adds a bias to attention scores"):
        model(random_tokens())


def test_learned_table_through_transformers_position_embedding_api(tmp_path):
    model = tiny_model("learned", max_position_embeddings=16)
    table = model.get_position_embeddings()
    assert table is model.model.position_encoding.position_embeddings and table.num_embeddings == 16
    ids = random_tokens(length=16)
    with torch.no_grad():
        before = model(ids).logits
    model.resize_position_embeddings(24)
    assert model.config.max_position_embeddings == 24 and model.get_position_embeddings().num_embeddings == 24
    torch.testing.assert_close(model.get_position_embeddings().weight[:16], table.weight)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)  # kept rows unchanged
        assert model(random_tokens(length=24)).logits.shape == (2, 24, 101)
    model.save_pretrained(tmp_path)
    assert PosEncForCausalLM.from_pretrained(tmp_path).get_position_embeddings().num_embeddings == 24
    model.resize_position_embeddings(8)
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        model(random_tokens(length=9))
    with pytest.raises(ValueError, match="new_num_position_embeddings.*0"):
        model.resize_position_embeddings(0)


def test_encodings_without_a_table_say_so():
    with pytest.raises(NotImplementedError, match="'rope' has no position-embedding table"):
        tiny_model("rope").get_position_embeddings()


@pytest.mark.parametrize("encoding", ["learned", "alibi"])
def test_positions_beyond_the_trained_length_are_allowed_and_reported_once(encoding, caplog):
    model = tiny_model(encoding, max_position_embeddings=64, original_max_position_embeddings=8)
    logger = "hf_posenc.model.modeling_hf_posenc"
    with caplog.at_level("WARNING", logger=logger):
        model(random_tokens(length=8))
        assert not [r for r in caplog.records if "trained context length" in r.message]
        model(random_tokens(length=12))
        model(random_tokens(length=20))
        model(random_tokens(length=3), position_ids=torch.tensor([[0, 9, 30]]))
    reports = [r.message for r in caplog.records if "trained context length" in r.message]
    assert len(reports) == 1 and "position 11 is beyond the trained context length of 8 tokens" in reports[0]
