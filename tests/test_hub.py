"""hf-posenc push: validation before work, the dry-run folder, the model card, and failing uploads (no network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers_model_dir import build_model_dir
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from hf_posenc.hub import card as hub_card
from hf_posenc.hub import upload as hub
from hf_posenc.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_FakeTokenForTestsOnly0123456789abcdef"
EXPECTED_FILES = [
    "README.md",
    "config.json",
    "configuration_hf_posenc.py",
    "data_dependent_hf_posenc.py",  # imported by encodings_hf_posenc.py: remote code needs it
    "encodings_hf_posenc.py",
    "eval.json",
    "generation_config.json",
    "metrics.jsonl",
    "model.safetensors",
    "modeling_hf_posenc.py",
    "run_config.yaml",
    "tokenizer.json",
    "tokenizer_config.json",
    "train_summary.json",
]


@pytest.fixture(scope="module")
def learned_dir(tmp_path_factory):
    """An evaluated `learned` model (128 tokens is past its 64 positions: one 'unsupported' row), with checkpoints/."""
    return build_model_dir(tmp_path_factory.mktemp("learned") / "model", "learned", with_eval=True, with_checkpoints=True)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    """An alibi model that was trained but never evaluated (no eval.json)."""
    return build_model_dir(tmp_path_factory.mktemp("plain") / "model", "alibi")


def copy_of(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model_copy"))


def push(*args: str) -> int:
    return main(["push", *map(str, args)])


def forbid_work(monkeypatch):
    """Make any assembly attempt fail loudly: validation must refuse before it."""

    def no_work(*args, **kwargs):
        raise AssertionError("assembly started despite invalid input")

    monkeypatch.setattr(hub, "assemble_upload_folder", no_work)


# ---------------------------------------------------------------- the template


def test_packaged_template_is_the_model_cards_template():
    canonical = REPO_ROOT / "model_cards" / hub_card.CARD_TEMPLATE_NAME
    packaged = REPO_ROOT / "src" / "hf_posenc" / "hub" / "templates" / hub_card.CARD_TEMPLATE_NAME
    assert packaged.read_bytes() == canonical.read_bytes(), (
        f"edit {canonical} and copy it to {packaged} (the package ships the copy)"
    )
    assert hub_card.check_template(None) == canonical.read_text(encoding="utf-8")


# ---------------------------------------------------------------- the dry-run folder


def test_dry_run_writes_exactly_the_upload_folder(learned_dir, tmp_path, capsys):
    out = tmp_path / "upload"
    assert push(learned_dir, "--repo-id", "someone/tiny-learned", "--dry-run", out) == 0
    files = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    assert files == EXPECTED_FILES
    assert not any(path.suffix in hub.PICKLE_SUFFIXES for path in out.rglob("*"))
    assert not (out / "checkpoints").exists()
    assert not list(tmp_path.glob(".upload.partial-*")), "the staging folder was left behind"
    printed = capsys.readouterr().out
    assert "nothing was uploaded" in printed and "model.safetensors" in printed
    # The weights are the model's, unchanged.
    source = load_file(learned_dir / "model.safetensors")
    written = load_file(out / "model.safetensors")
    assert source.keys() == written.keys()
    assert all(torch.equal(source[key], written[key]) for key in source)


def test_bin_only_model_is_converted_to_safetensors(tmp_path):
    model_dir = build_model_dir(tmp_path / "model", "rope", weights="bin")
    out = tmp_path / "upload"
    assert push(model_dir, "--repo-id", "someone/tiny-rope", "--dry-run", out) == 0
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    original = torch.load(model_dir / "pytorch_model.bin", weights_only=True)
    converted = load_file(out / "model.safetensors")
    assert all(torch.equal(original[key], converted[key]) for key in converted)


def test_dry_run_refuses_a_non_empty_folder(plain_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "upload"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    forbid_work(monkeypatch)
    assert push(plain_dir, "--repo-id", "someone/x", "--dry-run", out) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["keep.txt"]


# ---------------------------------------------------------------- the model card


def test_card_with_eval_has_the_exact_perplexities(learned_dir, tmp_path):
    out = tmp_path / "upload"
    assert push(learned_dir, "--repo-id", "someone/tiny-learned", "--dry-run", out, "--license", "mit") == 0
    card = ModelCard.load(out / "README.md")  # the front matter parses
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.license == "mit"
    assert {"hf_posenc", "position-encoding", "learned", "custom_code"} <= set(data.tags)
    assert not data.datasets  # the embedded corpus is not a Hub dataset ...
    assert "not a Hub dataset" in card.text  # ... the text says what it is

    evaluated = json.loads((learned_dir / "eval.json").read_text())["results"]
    expected = {row["eval_length"]: row["perplexity"] for row in evaluated if row["status"] == "ok"}
    assert len(expected) == 2  # 128 is past the learned table: not a result
    got = {result.metric_name: result.metric_value for result in data.eval_results}
    assert got == {f"Perplexity @ {length} tokens": value for length, value in expected.items()}
    assert all(result.metric_type == "perplexity" for result in data.eval_results)
    assert all(result.task_type == "text-generation" for result in data.eval_results)
    # The body table: measured rows and the unsupported one.
    for length, value in expected.items():
        assert f"| {length} | {value:.2f} |" in card.text
    assert "| 128 | not supported" in card.text
    assert "not evaluated" not in card.text
    assert 'from_pretrained("someone/tiny-learned", trust_remote_code=True)' in card.text
    assert "Learned position embeddings stop at 64 positions" in card.text
    # How to evaluate it with lm-evaluation-harness, and which context length the harness will use.
    assert "lm_eval --model hf --model_args pretrained=someone/tiny-learned,trust_remote_code=True" in card.text
    train_length = json.loads((learned_dir / "eval.json").read_text())["train_length"]
    assert f"the length the model was trained on: {train_length} tokens" in " ".join(card.text.split())


def test_card_without_eval_says_not_evaluated(plain_dir, tmp_path):
    out = tmp_path / "upload"
    assert push(plain_dir, "--repo-id", "someone/tiny-alibi", "--dry-run", out) == 0
    readme = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    assert "This model is not evaluated" in card.text
    assert not card.data.eval_results and "model-index" not in readme
    assert "Perplexity @" not in readme and "| Evaluation length" not in readme
    assert "eval.json" not in [path.name for path in out.iterdir()]
    # Training numbers are the recorded ones.
    summary = json.loads((plain_dir / "train_summary.json").read_text())
    assert f"| Final training loss | {summary['final_loss']:.4f} |" in card.text
    assert f"| Tokens seen | {summary['tokens_seen']:,} |" in card.text


def test_eval_without_a_successful_result_counts_as_not_evaluated(plain_dir, tmp_path):
    model_dir = copy_of(plain_dir, tmp_path)
    unsupported = {"eval_length": 512, "perplexity": None, "loss": None, "num_tokens": 0,
                   "status": "unsupported", "reason": "too long"}
    (model_dir / "eval.json").write_text(json.dumps({"position_encoding": "alibi", "results": [unsupported]}))
    out = tmp_path / "upload"
    assert push(model_dir, "--repo-id", "someone/x", "--dry-run", out) == 0
    card = ModelCard.load(out / "README.md")
    assert "This model is not evaluated" in card.text and "no successful perplexity" in card.text
    assert not card.data.eval_results


def test_card_falls_back_to_metrics_and_skips_a_cut_line(plain_dir, tmp_path, capsys):
    model_dir = copy_of(plain_dir, tmp_path)
    (model_dir / "train_summary.json").unlink()
    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    with open(model_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "lo')  # a run killed mid-write
    out = tmp_path / "upload"
    assert push(model_dir, "--repo-id", "someone/x", "--dry-run", out) == 0
    assert "skipped 1 unreadable line" in capsys.readouterr().err
    text = ModelCard.load(out / "README.md").text
    last_loss = [row["loss"] for row in rows if "loss" in row][-1]
    last_eval = [row["eval_loss"] for row in rows if "eval_loss" in row][-1]
    assert f"| Final training loss | {last_loss:.4f} |" in text
    assert f"| Final validation loss | {last_eval:.4f} |" in text
    assert "Tokens seen" not in text  # only train_summary records it: left out, not guessed


def test_card_shows_task_accuracies_and_never_guesses_the_eval_data(learned_dir):
    config = json.loads((learned_dir / "config.json").read_text())
    records = hub_card.read_run_records(learned_dir, config)
    records.eval = dict(records.eval, data=None, tasks=[{"task": "copy", "length": 48, "accuracy": 0.25, "num_examples": 8}])
    card = hub_card.build_model_card(config, records, "someone/tiny-learned")
    assert "| copy | 48 | 0.250 | 8 |" in card.text
    assert "on an unrecorded data source" in card.text and "standard library" not in card.text.split("## Evaluation")[1]
    assert {result.dataset_type for result in card.data.eval_results} == {"unknown"}


def test_custom_template_is_used(plain_dir, tmp_path):
    template = tmp_path / "card.md.j2"
    template.write_text("---\n{{ card_data }}\n---\n# {{ model_name }} uses {{ encoding }}\n")
    out = tmp_path / "out"
    assert push(plain_dir, "--repo-id", "someone/x", "--dry-run", out, "--template", template) == 0
    card = ModelCard.load(out / "README.md")
    assert card.text.strip() == "# x uses alibi" and card.data.library_name == "transformers"


def test_hub_dataset_goes_to_the_card_metadata(tmp_path):
    model_dir = build_model_dir(tmp_path / "model", "t5_bias", data="Salesforce/wikitext")
    card = hub_card.build_model_card(
        json.loads((model_dir / "config.json").read_text()),
        hub_card.read_run_records(model_dir, {"position_encoding": "t5_bias"}),
        "someone/tiny-t5",
    )
    assert card.data.datasets == ["Salesforce/wikitext"]
    assert "https://huggingface.co/datasets/Salesforce/wikitext" in card.text


@pytest.mark.parametrize(
    ("data", "kind"),
    [(None, "embedded"), ("stdlib", "embedded"), ("./corpus", "local"), ("/data/a.txt", "local"),
     ("notes.jsonl", "local"), ("wikitext", "hub"), ("Salesforce/wikitext", "hub"), ("a/b/c", "unknown"),
     # the descriptions hf_posenc.data.corpus.describe_data records in train_summary.json and eval.json
     ("stdlib: Python 3.11 standard library sources (/usr/lib/python3.11)", "embedded"),
     ("local: /home/me/corpus", "local"), ("hub: Salesforce/wikitext (wikitext-2-raw-v1)", "hub")],
)
def test_data_source_classification(data, kind):
    assert hub_card.data_source(data).kind == kind


def test_recorded_descriptions_keep_their_details():
    assert hub_card.data_source("stdlib: Python 3.11 standard library sources (/usr/lib)").python_version == "3.11"
    source = hub_card.data_source("hub: Salesforce/wikitext (wikitext-2-raw-v1)")
    assert (source.name, source.config) == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    assert hub_card.data_source("local: /home/me/corpus").name == "/home/me/corpus"


def test_custom_template_with_unknown_variable_is_refused(plain_dir, tmp_path, monkeypatch, capsys):
    forbid_work(monkeypatch)
    template = tmp_path / "card.md.j2"
    template.write_text("---\n{{ card_data }}\n---\n# {{ model_name }} {{ modle_name }}\n")
    assert push(plain_dir, "--repo-id", "someone/x", "--dry-run", tmp_path / "out", "--template", template) == 2
    assert "modle_name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- bad input refused before any work


@pytest.mark.parametrize(
    "repo_id",
    ["tiny-alibi", "org/name/extra", "org/bad name", "org/-dash-start", "org/a--b", "org/a..b", "/name", "org/", ""],
)
def test_invalid_repo_id_is_refused_before_any_work(plain_dir, tmp_path, monkeypatch, capsys, repo_id):
    forbid_work(monkeypatch)
    out = tmp_path / "out"
    assert push(plain_dir, "--repo-id", repo_id, "--dry-run", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-posenc push: error: --repo-id") and err.count("\n") == 1
    assert not out.exists()


def test_invalid_license_is_refused(plain_dir, tmp_path, monkeypatch, capsys):
    forbid_work(monkeypatch)
    assert push(plain_dir, "--repo-id", "a/b", "--dry-run", tmp_path / "out", "--license", "Apache 2") == 2
    assert "--license" in capsys.readouterr().err


def break_config(field, value):
    def edit(model_dir):
        config = json.loads((model_dir / "config.json").read_text())
        config[field] = value
        (model_dir / "config.json").write_text(json.dumps(config))

    return edit


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: (d / "config.json").write_text("{not json"), "is not valid JSON"),
        (break_config("model_type", "llama"), "model_type 'hf_posenc'"),
        (break_config("position_encoding", "my_custom"), "only the built-in encodings"),
        (lambda d: (d / "model.safetensors").unlink(), "has no weights"),
        (lambda d: [(d / name).unlink() for name in ("tokenizer.json", "tokenizer_config.json")], "has no tokenizer"),
        (lambda d: (d / "eval.json").write_text('{"results": "x"}'), "'results' list"),
        (lambda d: (d / "eval.json").write_text('{"position_encoding": "rope", "results": []}'), "another model"),
        (lambda d: (d / "run_config.yaml").write_text("a: [1,"), "not valid YAML"),
    ],
    ids=["no-config", "bad-json", "not-hf-posenc", "custom-encoding", "no-weights", "no-tokenizer", "bad-eval",
         "eval-of-another-model", "bad-run-config"],
)
def test_invalid_model_dir_is_refused_before_any_work(plain_dir, tmp_path, monkeypatch, capsys, damage, message):
    model_dir = copy_of(plain_dir, tmp_path)
    damage(model_dir)
    forbid_work(monkeypatch)
    out = tmp_path / "out"
    assert push(model_dir, "--repo-id", "someone/x", "--dry-run", out) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert push(tmp_path / "missing", "--repo-id", "someone/x", "--dry-run", out) == 2


def test_weights_that_do_not_match_the_config_are_refused(plain_dir, tmp_path, capsys):
    model_dir = copy_of(plain_dir, tmp_path)
    weights = load_file(model_dir / "model.safetensors")
    weights.pop("model.norm.weight")  # would otherwise be silently re-initialized
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    assert push(model_dir, "--repo-id", "someone/x", "--dry-run", out) == 2
    assert "do not match its config.json" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


# ---------------------------------------------------------------- uploads (never reaching the network)


def test_upload_offline_fails_clearly(plain_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    forbid_work(monkeypatch)  # refused before assembling anything
    assert push(plain_dir, "--repo-id", "someone/tiny-alibi") == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("hf-posenc push: error: cannot upload: offline mode") and captured.err.count("\n") == 1
    assert FAKE_TOKEN not in captured.out + captured.err


def test_upload_to_an_unreachable_hub_fails_clearly(plain_dir, monkeypatch, capsys):
    """Everything up to the upload call runs; the call itself meets a closed local port."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert push(plain_dir, "--repo-id", "someone/tiny-alibi", "--private") == 1
    captured = capsys.readouterr()
    error_lines = [line for line in captured.err.splitlines() if "error" in line]
    assert len(error_lines) == 1 and error_lines[0].startswith("hf-posenc push: error: upload to http://127.0.0.1:9/")
    assert "Traceback" not in captured.err
    assert FAKE_TOKEN not in captured.out + captured.err


def test_upload_without_a_token_fails_clearly(plain_dir, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # not logged in, no HF_TOKEN
    forbid_work(monkeypatch)
    assert push(plain_dir, "--repo-id", "someone/tiny-alibi") == 1
    assert "no Hugging Face token" in capsys.readouterr().err


def test_upload_sends_exactly_the_dry_run_folder(learned_dir, tmp_path, monkeypatch, capsys):
    """create_repo + upload_folder receive what --dry-run writes (the Hub calls are recorded, not made)."""
    from huggingface_hub import HfApi, constants

    calls = {}

    def fake_create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["upload_folder"] = {"repo_id": repo_id, **kwargs}
        calls["files"] = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        return None

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    assert push(learned_dir, "--repo-id", "someone/tiny-learned", "--private", "--commit-message", "first") == 0
    assert "Uploaded 14 files to someone/tiny-learned" in capsys.readouterr().out
    assert calls["create_repo"]["repo_id"] == "someone/tiny-learned"
    assert calls["create_repo"]["exist_ok"] is True and calls["create_repo"]["private"] is True
    assert calls["upload_folder"]["commit_message"] == "first"
    assert "*.bin" in calls["upload_folder"]["delete_patterns"]  # stale pickles of an older push go away

    out = tmp_path / "dry"
    assert push(learned_dir, "--repo-id", "someone/tiny-learned", "--dry-run", out) == 0
    dry = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert sorted(calls["files"]) == sorted(dry) == EXPECTED_FILES
    for name in ("README.md", "config.json", "model.safetensors", "modeling_hf_posenc.py", "tokenizer.json"):
        assert calls["files"][name] == dry[name], name


def test_card_training_rows_come_from_the_nested_run_config(plain_dir):
    config = json.loads((plain_dir / "config.json").read_text())
    rows = dict(hub_card.training_rows(hub_card.read_run_records(plain_dir, config)))
    assert rows["Learning rate (peak)"] == "0.001"  # training.lr of the nested run config
    assert rows["Training sequence length (block size)"] == "32" and rows["Optimizer steps (max_steps)"] == "2"
    assert rows["Per-device batch size"] == "1" and rows["Sequences per optimizer step (global batch)"] == "1"


def test_folders_of_older_releases_still_make_a_card(tmp_path):
    """A flat run config and a data source stored as prose (what earlier releases wrote) still read."""
    model_dir = build_model_dir(tmp_path / "model", "alibi")
    (model_dir / "run_config.yaml").write_text("position_encoding: alibi\ndata: stdlib\nblock_size: 32\n"
                                              "max_steps: 2\nlearning_rate: 0.002\n")
    summary = json.loads((model_dir / "train_summary.json").read_text())
    summary["data"] = "stdlib: Python 3.11 standard library sources (/usr/lib/python3.11)"
    (model_dir / "train_summary.json").write_text(json.dumps(summary))
    config = json.loads((model_dir / "config.json").read_text())
    records = hub_card.read_run_records(model_dir, config)
    assert dict(hub_card.training_rows(records))["Learning rate (peak)"] == "0.002"
    assert hub_card.training_data_source(records).python_version == "3.11"


def test_eval_variants_are_labelled_and_never_the_models_perplexity(tmp_path):
    model_dir = build_model_dir(tmp_path / "model", "rope", with_eval=True)
    variant = json.loads((model_dir / "eval.json").read_text())
    variant.update(variant="rope-yarn", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    for row in variant["results"]:
        row["perplexity"] = 1234.5  # distinguishable from the model's own numbers
    (model_dir / "eval_variants").mkdir()
    (model_dir / "eval_variants" / "rope-yarn.json").write_text(json.dumps(variant))
    out = tmp_path / "upload"
    files = hub.assemble_upload_folder(model_dir, out, "someone/tiny-rope")
    assert "eval_variants/rope-yarn.json" in files
    card = ModelCard.load(out / "README.md")
    assert "### Variants (not the model's own perplexity)" in card.text
    assert "| rope-yarn | RoPE scaling yarn x4 | 32 | 1234.50 |" in card.text
    assert all(result.metric_value != 1234.5 for result in card.data.eval_results)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:400]), "cannot load the model"),
        (lambda d: (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text()[:300]), "cannot load the tokenizer"),
        (lambda d: (d / "config.json").write_text("[]"), "got a JSON list"),
        (lambda d: (d / "train_summary.json").write_text('{"data": 7}'), "data must be an object or a string"),
    ],
    ids=["truncated-weights", "truncated-tokenizer", "config-is-a-list", "summary-data-wrong-type"],
)
def test_a_damaged_model_folder_is_one_line_in_push(plain_dir, tmp_path, capsys, damage, message):
    model_dir = copy_of(plain_dir, tmp_path)
    damage(model_dir)
    capsys.readouterr()
    assert push(model_dir, "--repo-id", "someone/x", "--dry-run", tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert message in error.strip().splitlines()[-1] and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_a_dry_run_folder_under_a_file_is_refused_before_any_work(plain_dir, tmp_path, monkeypatch, capsys):
    forbid_work(monkeypatch)
    (tmp_path / "file").write_text("x")
    assert push(plain_dir, "--repo-id", "someone/x", "--dry-run", tmp_path / "file" / "out") == 2
    assert "is a file, not a folder" in capsys.readouterr().err
