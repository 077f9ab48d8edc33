"""compare with randomized-positions variants: settings, folders, records, tables, plots, claims, reuse, CLI."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers_length_generalization import is_png, tiny_run_section, write_text_folder

from hf_posenc.cli import main
from hf_posenc.errors import SettingsError
from hf_posenc.study.claims import check_claims
from hf_posenc.study.compare import EMBEDDED_DEFAULT_CONFIG, compare_config_from_dict, run_compare

VARIANT = "rope + random positions"


def default_with(**changes) -> dict:
    raw = yaml.safe_load(EMBEDDED_DEFAULT_CONFIG)
    raw.update(changes)
    return raw


def test_default_study_has_no_variant():
    config = compare_config_from_dict(default_with())
    assert config.random_positions is None
    assert [m.label for m in config.models()] == config.encodings


def test_variants_follow_their_encoding_and_get_the_training_field():
    config = compare_config_from_dict(default_with(random_positions={"max": 1024, "encodings": ["rope", "nope"]}))
    assert [m.label for m in config.models()] == ["sinusoidal", "learned", "rope", VARIANT, "alibi", "t5_bias", "nope",
                                                  "nope + random positions"]
    variant = config.models()[3]
    assert variant.folder_name == "rope-randpos" and variant.encoding == "rope"
    run = config.run_config_for(variant, "out/rope-randpos", seed_index=1)
    assert run.training.random_positions_max == 1024 and run.model.position_encoding == "rope"
    assert run.run_name == "compare-tiny-rope-randpos" and run.training.seed == 1
    assert config.run_config_for("rope", "out/rope").training.random_positions_max is None
    everyone = compare_config_from_dict(default_with(encodings=["rope", "alibi"], random_positions={"max": 2048}))
    assert [m.folder_name for m in everyone.models()] == ["rope", "rope-randpos", "alibi", "alibi-randpos"]


@pytest.mark.parametrize("random_positions, changes, field, message", [
    ({"max": 128}, {}, "random_positions.max", r"random_positions\.max must be > run\.data\.block_size \(128\), got 128"),
    ({"max": 512}, {}, "random_positions.max", r"must be >= the longest evaluation length eval\.lengths \(1024\), got 512"),
    ({"max": 2}, {}, "random_positions.max", r"random_positions\.max must be >= 3, got 2"),
    ({"max": "many"}, {}, "random_positions.max", "random_positions.max .*must be an integer"),
    ({"encodings": ["rope"]}, {}, "random_positions.max", r"random_positions\.max must be set"),
    ({"max": 1024, "encodings": ["rope", "fire"]}, {}, "random_positions.encodings",
     r"\['fire'\] not in the study's encodings"),
    ({"max": 1024, "encodings": ["rotary"]}, {}, "random_positions.encodings", "random_positions.encodings: position_encoding must be one of .* got 'rotary'"),
    ({"max": 1024, "encodings": []}, {}, "random_positions.encodings", "non-empty"),
    ({"max": 1024, "encodings": ["learned"]}, {}, "random_positions.max",
     r"random_positions\.max=1024 is beyond the positions the learned variant can represent "
     r"\(run\.model\.max_position_embeddings=512\)"),
    ({"max": 1024, "colour": "red"}, {}, "random_positions.colour", "unknown key"),
    (None, {"run": {"training": {"random_positions_max": 1024}}}, "run.training.random_positions_max",
     r"run\.training\.random_positions_max is set per model by compare.*random_positions\.max"),
])
def test_bad_random_positions_settings_name_the_field(random_positions, changes, field, message):
    raw = default_with(random_positions=random_positions)
    for key, value in changes.items():  # nested changes merged into the section
        raw[key] = {**raw[key], **{k: {**raw[key].get(k, {}), **v} for k, v in value.items()}}
    with pytest.raises(SettingsError, match=message) as caught:
        compare_config_from_dict(raw)
    assert caught.value.field == field


def test_learned_variant_fits_once_its_table_is_large_enough():
    raw = default_with(random_positions={"max": 1024, "encodings": ["learned"]})
    raw["run"]["model"]["max_position_embeddings"] = 1024
    assert [m.label for m in compare_config_from_dict(raw).models()][:3] == ["sinusoidal", "learned",
                                                                             "learned + random positions"]


@pytest.fixture
def captured_config(monkeypatch):
    """The config the CLI hands to run_compare (nothing is trained)."""
    import hf_posenc.study.compare as compare

    seen = {}

    def fake_run_compare(config, output_dir, **kwargs):
        seen["config"] = config
        return {"markdown": "", "output_dir": output_dir, "files": []}

    monkeypatch.setattr(compare, "run_compare", fake_run_compare)
    return seen


def test_cli_flags_set_the_variants(captured_config, tmp_path):
    assert main(["compare", "--encodings", "rope,alibi", "--random-positions", "1024", "--output-dir", str(tmp_path)]) == 0
    settings = captured_config["config"].random_positions
    assert settings.max == 1024 and settings.encodings is None
    assert [m.folder_name for m in captured_config["config"].models()] == ["rope", "rope-randpos", "alibi", "alibi-randpos"]
    assert main(["compare", "--encodings", "rope,alibi", "--random-positions", "2048", "--random-positions-encodings",
                 "alibi", "--output-dir", str(tmp_path)]) == 0
    assert [m.folder_name for m in captured_config["config"].models()] == ["rope", "alibi", "alibi-randpos"]


@pytest.mark.parametrize("flags, message", [
    (["--random-positions", "128"], "--random-positions must be > run.data.block_size (128), got 128"),
    (["--random-positions", "lots"], "--random-positions"),
    (["--random-positions", "1024", "--random-positions-encodings", "alibi", "--encodings", "rope"],
     "--random-positions-encodings: ['alibi'] not in the study's encodings ['rope']"),
    (["--random-positions", "1024", "--random-positions-encodings", "learned"],
     "lower --random-positions, raise run.model.max_position_embeddings or leave learned out of "
     "--random-positions-encodings"),
])
def test_cli_bad_flags_exit_2_naming_the_flag(flags, message, capsys, tmp_path):
    assert main(["compare", *flags, "--output-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


# ---- a real mini study: rope and its variant, two seeds ---------------------------------------------------
@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-randpos")
    data = write_text_folder(root / "text")
    raw = {
        "name": "mini",
        "encodings": ["rope"],
        "seeds": 2,
        "run": tiny_run_section(data, root / "cache"),  # block size 32
        "eval": {"lengths": [32, 64], "max_windows": 2, "batch_size": 2, "rope_scaling": ["dynamic"],
                 "sliding_stride": 16, "position_loss_windows": 2},
        "tasks": None,
        "random_positions": {"max": 64},
    }
    config = compare_config_from_dict(raw)
    result = run_compare(config, root / "out", show_progress=False, skip_figures=True)
    return raw, config, result, root / "out"


def test_mini_study_writes_both_folders_rows_and_lines(mini):
    _, _, result, out = mini
    for seed_dir in (out, out / "seeds" / "seed-1"):
        for folder in ("rope", "rope-randpos"):
            assert (seed_dir / folder / "train_summary.json").is_file(), (seed_dir, folder)
    variant_run = yaml.safe_load((out / "rope-randpos" / "run_config.yaml").read_text())
    assert variant_run["training"]["random_positions_max"] == 64 and variant_run["model"]["position_encoding"] == "rope"
    assert yaml.safe_load((out / "rope" / "run_config.yaml").read_text())["training"]["random_positions_max"] is None
    assert not (out / "rope-randpos" / "eval_variants" / "rope-dynamic.json").exists()  # scaling: the plain rope only

    records = json.loads((out / "results.json").read_text())
    ppl = [r for r in records if r["record_type"] == "perplexity" and not r["sliding"]]
    assert {r["label"] for r in ppl} == {"rope", "rope + dynamic x2", VARIANT}
    mine = [r for r in ppl if r["label"] == VARIANT]
    assert len(mine) == 4 and {r["seed"] for r in mine} == {0, 1}  # 2 lengths x 2 seeds
    assert all(r["position_encoding"] == "rope" and r["random_positions_max"] == 64 and r["status"] == "ok" for r in mine)
    assert all(r["random_positions_max"] is None for r in ppl if r["label"] != VARIANT)
    sliding = {r["label"] for r in records if r["record_type"] == "perplexity" and r["sliding"]}
    assert sliding == {"rope", VARIANT}
    for record_type in ("training", "position_loss"):
        labels = {(r["label"], r["random_positions_max"]) for r in records if r["record_type"] == record_type}
        assert labels == {("rope", None), (VARIANT, 64)}, record_type

    markdown = (out / "results.md").read_text()
    perplexity_section = markdown.split("## Perplexity by evaluation length")[1].split("##")[0]
    sliding_section = markdown.split("## Perplexity with sliding windows")[1].split("##")[0]
    training_section = markdown.split("## Training")[1].split("##")[0]
    for section in (perplexity_section, sliding_section, training_section):
        assert f"| {VARIANT} |" in section and "| rope |" in section
    assert "sorted random subset of [0, 64)" in markdown
    for name in ("loss_curves", "perplexity_vs_length", "loss_by_position"):
        assert is_png(out / f"{name}.png"), name


def test_claims_read_the_plain_runs_only(mini):
    _, _, result, _ = mini
    records = [r for r in result["records"] if r["record_type"] != "claim"]
    claims = {r["claim"]: r for r in result["records"] if r["record_type"] == "claim"}
    without_variant = {r["claim"]: r for r in check_claims(
        [r for r in records if r.get("random_positions_max") is None], ["rope"])}
    for claim, row in claims.items():
        if claim != "random_positions_help_rope":
            assert (row["measured"], row["verdict"]) == (without_variant[claim]["measured"], without_variant[claim]["verdict"])
    tested = claims["random_positions_help_rope"]
    assert tested["measured"]["n"] == 2 and "Ruoss et al. 2023" in tested["source"]
    assert "not tested" in without_variant["random_positions_help_rope"]["note"]


def test_rerun_reuses_variants_refuses_a_changed_max_and_overwrite_retrains(mini):
    raw, config, _, out = mini
    weights = out / "rope-randpos" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    again = run_compare(config, out, show_progress=False, skip_figures=True)
    assert weights.stat().st_mtime_ns == before
    assert again["timings"]["reused"]["train"] == ["rope", "rope-randpos", "rope@seed1", "rope-randpos@seed1"]
    assert {"rope-randpos", "rope-randpos+sliding", "rope-randpos@seed1"} <= set(again["timings"]["reused"]["eval"])
    assert "train" not in again["timings"]["phases"]
    changed = compare_config_from_dict(dict(raw, random_positions={"max": 96}))
    with pytest.raises(SettingsError, match=r"rope-randpos.*holds a rope \+ random positions run with another "
                                            r"configuration \(training\.random_positions_max: 64 -> 96\)"):
        run_compare(changed, out, show_progress=False)
    one_seed = compare_config_from_dict(dict(raw, seeds=1))
    run_compare(one_seed, out, overwrite=True, show_progress=False, skip_figures=True)
    assert weights.stat().st_mtime_ns != before
