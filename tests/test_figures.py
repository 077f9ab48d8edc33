"""Figures that explain the encodings: profiles computed from the encodings, attention averages, PNG output."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config, tiny_model
from helpers_length_generalization import is_png, write_text_folder
from helpers_model_dir import build_model_dir

from hf_posenc.cli import main
from hf_posenc.model.encodings_hf_posenc import alibi_slopes
from hf_posenc.study.figures import attention_by_distance, average_attention, distance_profile, draw_figures


def test_alibi_profile_is_minus_slope_times_distance():
    config = tiny_config("alibi")
    profile = distance_profile("alibi", config, max_distance=20)
    slopes = alibi_slopes(config.num_attention_heads)
    assert len(profile["curves"]) == config.num_attention_heads
    for head, (_, values) in enumerate(profile["curves"]):
        torch.testing.assert_close(values, -slopes[head] * torch.arange(21).float())


def test_rope_profile_is_mean_cosine_of_the_frequencies():
    config = tiny_config("rope")
    _, values = distance_profile("rope", config, max_distance=40)["curves"][0]
    head_dim = config.head_dim
    inv_freq = 1.0 / (config.rope_parameters["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
    expected = torch.cos(torch.arange(41).float()[:, None] * inv_freq[None, :]).mean(-1)
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)


def test_other_profiles():
    config = tiny_config("sinusoidal", hidden_size=64)
    _, sinusoidal = distance_profile("sinusoidal", config, max_distance=30)["curves"][0]
    assert sinusoidal[0] == pytest.approx(1.0) and sinusoidal[1:].max() < 1.0
    t5 = distance_profile("t5_bias", tiny_config("t5_bias"), max_distance=50)
    buckets = t5["curves"][0][1]
    assert torch.all(buckets[1:] >= buckets[:-1]) and buckets[0] == 0 and buckets[-1] == 7  # 8 buckets, max distance 32
    trained = tiny_model("t5_bias")
    with torch.no_grad():
        trained.model.position_encoding.relative_attention_bias.weight.copy_(torch.arange(8.0)[:, None].expand(8, 4))
    learned_bias = distance_profile("t5_bias", trained.config, trained, max_distance=50)["curves"]
    torch.testing.assert_close(learned_bias[0][1], buckets)  # the bias of bucket b is b here
    _, nope = distance_profile("nope", tiny_config("nope"), max_distance=10)["curves"][0]
    assert torch.all(nope == 0)
    learned = distance_profile("learned", tiny_config("learned"), tiny_model("learned"), max_distance=100)
    assert len(learned["curves"][0][1]) == 64  # distances 0..63 exist for 64 positions


def test_average_attention_is_a_causal_distribution():
    model = tiny_model("alibi", attn_implementation="sdpa")
    windows = torch.randint(3, 101, (3, 12), generator=torch.Generator().manual_seed(0))
    attention = average_attention(model, windows, batch_size=2)
    assert attention.shape == (12, 12)
    torch.testing.assert_close(attention.sum(-1), torch.ones(12))
    assert torch.all(attention.triu(1) == 0)
    assert model.config._attn_implementation == "sdpa"  # restored after the eager pass
    profile = attention_by_distance(attention)
    assert profile.shape == (12,) and math.isclose(float(profile[11]), float(attention[11, 0]))


def test_figures_command_draws_pngs(tmp_path, capsys):
    assert main(["figures", "--output-dir", str(tmp_path / "plain"), "--no-progress"]) == 0
    assert is_png(tmp_path / "plain" / "encoding_distance_profiles.png")
    models = tmp_path / "models"
    for encoding in ("rope", "learned", "t5_bias"):
        build_model_dir(models / encoding, encoding)
    data = write_text_folder(tmp_path / "text")
    written = draw_figures(tmp_path / "trained", [models], windows=2, data=str(data), show_progress=False)
    assert [p.name for p in written] == ["encoding_distance_profiles.png", "attention_maps.png", "attention_by_distance.png"]
    assert all(is_png(p) and p.stat().st_size < 300_000 for p in written)
    assert main(["figures", "--models", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_a_model_with_a_missing_tensor_is_refused_by_figures(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from hf_posenc.cli import main

    model_dir = build_model_dir(tmp_path / "model", "alibi")
    weights = load_file(model_dir / "model.safetensors")
    weights.pop("model.norm.weight")
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    assert main(["figures", "--output-dir", str(tmp_path / "figs"), "--models", str(model_dir), "--no-progress"]) == 2
    assert "do not match its config.json" in capsys.readouterr().err


def test_a_figures_output_dir_under_a_file_is_refused(tmp_path, capsys):
    from hf_posenc.cli import main

    (tmp_path / "file").write_text("x")
    assert main(["figures", "--output-dir", str(tmp_path / "file" / "figs"), "--no-progress"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
