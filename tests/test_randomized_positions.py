"""Randomized positions (Ruoss et al., 2023) as a training option: sorted random subsets of [0, M)."""

from types import SimpleNamespace

import pytest
import torch

from hf_posenc.errors import SettingsError
from hf_posenc.train.engine import _training_batch, randomized_positions
from hf_posenc.train.run_config import RunConfig
from tests.conftest import ENCODINGS, random_tokens, tiny_model


def test_positions_are_sorted_distinct_in_range_and_reproducible():
    positions = randomized_positions(100, 3, 16, seed=7)
    assert positions.shape == (3, 16) and positions.dtype == torch.long
    assert (positions.diff(dim=-1) > 0).all() and positions.min() >= 0 and positions.max() < 100
    assert torch.equal(positions, randomized_positions(100, 3, 16, seed=7))  # a resumed run draws the same
    assert not torch.equal(positions, randomized_positions(100, 3, 16, seed=8))
    assert not torch.equal(positions[0], positions[1])  # one subset per row


@pytest.mark.parametrize("encoding", [e for e in ENCODINGS if e != "learned"])
def test_training_forward_uses_the_positions_without_cutting_rows_into_packed_pieces(encoding):
    settings = SimpleNamespace(random_positions_max=64, seed=0)
    model = tiny_model(encoding, "sdpa", max_position_embeddings=64)
    ids = random_tokens(batch=2, length=10)
    with torch.no_grad():
        loss = model(**_training_batch(ids, settings, step=3, micro=0, rank=0), use_cache=False).loss
        positions = randomized_positions(64, 2, 10, ((0 * 1_000_003 + 3) * 1009 + 0) * 101 + 0)
        ones = torch.ones_like(ids)
        expected = tiny_model(encoding, "eager", max_position_embeddings=64)(
            ids, labels=ids, position_ids=positions, attention_mask=ones).loss
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
        # the last token still sees an earlier one (non-contiguous positions are not read as packed sequences);
        # the previous token, since distance biases such as kerple_power's -d can drown a far one in fp32
        changed = ids.clone()
        changed[:, -2] = (changed[:, -2] + 1) % 101
        before = model(ids, position_ids=positions, attention_mask=ones).logits[:, -1]
        after = model(changed, position_ids=positions, attention_mask=ones).logits[:, -1]
        assert (before - after).abs().max() > 1e-6


def test_bad_settings_are_refused_by_name():
    raw = {"data": {"block_size": 32}, "training": {"random_positions_max": 32}}
    with pytest.raises(SettingsError, match=r"training\.random_positions_max must be > data\.block_size \(32\), got 32"):
        RunConfig.from_dict(raw).validate()
    raw = {"model": {"position_encoding": "learned", "max_position_embeddings": 64}, "data": {"block_size": 32},
           "training": {"random_positions_max": 100}}
    with pytest.raises(SettingsError, match=r"training\.random_positions_max=100 is beyond.*max_position_embeddings=64"):
        RunConfig.from_dict(raw).validate()
    RunConfig.from_dict({"data": {"block_size": 32}, "training": {"random_positions_max": 1024}}).validate()
