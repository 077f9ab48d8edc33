"""hf-posenc eval: perplexity by length, windows, unsupported lengths, RoPE scaling, clear errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_model
from helpers_length_generalization import write_text_folder
from helpers_model_dir import build_model_dir

from hf_posenc.cli import main
from hf_posenc.cli.eval import parse_lengths
from hf_posenc.errors import UsageError
from hf_posenc.evaluation.perplexity import (
    PERPLEXITY_METRIC_DIR,
    check_lengths,
    evaluate_model_dir,
    perplexity_by_length,
    plan_windows,
)


def token_stream(n=200, vocab=101, seed=3) -> torch.LongTensor:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def test_perplexity_is_exp_of_mean_token_nll():
    model = tiny_model("rope", attn_implementation="sdpa")
    ids = token_stream()
    rows = perplexity_by_length(model, ids, [16, 48], batch_size=5, show_progress=False)
    for row, length in zip(rows, (16, 48)):
        windows = len(ids) // length
        with torch.no_grad():  # transformers' own loss: mean NLL of the length - 1 predicted tokens of a window
            losses = [model(input_ids=ids[None, i * length : (i + 1) * length], labels=ids[None, i * length : (i + 1) * length]).loss
                      for i in range(windows)]
        expected = math.exp(sum(float(loss) for loss in losses) / windows)
        assert row["status"] == "ok" and row["num_windows"] == windows
        assert row["num_tokens"] == windows * (length - 1)
        assert row["perplexity"] == pytest.approx(expected, rel=1e-5)
        assert row["loss"] == pytest.approx(math.log(expected), rel=1e-5)


def test_sliding_windows_score_every_token_once():
    n, length, stride = 100, 32, 8
    windows = plan_windows(n, length, stride)
    assert [start for start, _ in windows] == list(range(0, n - length + 1, stride))  # 9 whole windows
    scored = [start + j for start, first in windows for j in range(first, length)]
    assert len(scored) == len(set(scored)) == (length - 1) + (len(windows) - 1) * stride  # 31 + 8 * 8 = 95
    assert sorted(scored) == list(range(1, windows[-1][0] + length))
    # each scored token (after the first window) sees at least length - stride tokens of context
    assert all(first >= length - stride for _, first in windows[1:])
    # stride == length: as many windows as non-overlapping ones, each scoring length - 1 tokens
    assert [f for _, f in plan_windows(n, length, length)] == [1, 1, 1]


def test_sliding_window_counts_through_the_model():
    model = tiny_model("alibi", attn_implementation="sdpa")
    ids = token_stream(120)
    row = perplexity_by_length(model, ids, [32], stride=8, show_progress=False)[0]
    assert row["num_windows"] == (120 - 32) // 8 + 1 == 12
    assert row["num_tokens"] == 31 + 11 * 8
    # by hand: window k starts at 8k; the first scores its 31 predictions, later ones their last 8
    total = 0.0
    with torch.no_grad():
        for k in range(12):
            window = ids[8 * k : 8 * k + 32][None]
            nll = torch.nn.functional.cross_entropy(model(input_ids=window).logits[0, :-1], window[0, 1:], reduction="none")
            total += float(nll.sum() if k == 0 else nll[-8:].sum())
    assert row["perplexity"] == pytest.approx(math.exp(total / row["num_tokens"]), rel=1e-5)


def test_budgets_bound_windows_and_tokens():
    assert len(plan_windows(1000, 10, max_windows=3)) == 3
    windows = plan_windows(1000, 10, max_tokens=25)  # 9 tokens a window: 3 windows reach 27 >= 25
    assert len(windows) == 3
    assert plan_windows(5, 10) == []


def test_learned_beyond_its_positions_is_an_unsupported_row():
    model = tiny_model("learned", attn_implementation="sdpa")  # max_position_embeddings=64
    rows = perplexity_by_length(model, token_stream(300), [32, 64, 128], max_positions=64, show_progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok", "unsupported"]
    assert rows[2]["perplexity"] is None and rows[2]["num_tokens"] == 0
    assert "max_position_embeddings=64" in rows[2]["reason"]


def test_not_enough_text_is_reported_per_length():
    model = tiny_model("nope", attn_implementation="sdpa")
    rows = perplexity_by_length(model, token_stream(40), [16, 64], show_progress=False)
    assert [r["status"] for r in rows] == ["ok", "insufficient_data"]


def test_metric_module_loads_by_path_and_weights_by_tokens():
    import evaluate

    metric = evaluate.load(str(PERPLEXITY_METRIC_DIR))
    metric.add_batch(losses=[2.0, 9.0], num_tokens=[2, 3])
    metric.add_batch(losses=[1.0], num_tokens=[5])
    result = metric.compute()
    assert result["num_tokens"] == 10
    assert result["loss"] == pytest.approx(1.2)
    assert result["perplexity"] == pytest.approx(math.exp(1.2))


@pytest.mark.parametrize("bad", ["0", "-5", "abc", "12.5", "", "256,,512", "1"])
def test_bad_lengths_are_usage_errors(bad):
    with pytest.raises(UsageError, match="length"):
        check_lengths(parse_lengths(bad))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return {
        "rope": build_model_dir(root / "rope", "rope"),
        "learned": build_model_dir(root / "learned", "learned"),  # 64 positions, trained length 32
        "alibi": build_model_dir(root / "alibi", "alibi"),
        "data": write_text_folder(root / "text"),
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lengths", "0,64"], "integers >= 2"),
        (["--lengths", "sixty"], "integers >= 2"),
        (["--lengths", "64", "--rope-factor", "2"], "--rope-factor needs --rope-scaling"),
        (["--lengths", "32,64", "--stride", "48"], "--stride"),
        (["--lengths", "64", "--stride", "0"], "--stride must be an integer >= 1"),
        (["--lengths", "64", "--max-tokens", "x"], "--max-tokens"),
    ],
)
def test_cli_refuses_bad_input_with_exit_code_2(model_dirs, capsys, argv, message):
    assert main(["eval", str(model_dirs["rope"]), *argv]) == 2
    error = capsys.readouterr().err
    assert "hf-posenc eval: error:" in error and message in error


def test_cli_refuses_a_folder_without_a_model(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--lengths", "64"]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["eval", str(tmp_path), "--lengths", "64"]) == 2
    assert "not an hf_posenc model" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing"), "--lengths", "64"]) == 2
    assert "not found" in capsys.readouterr().err


def test_rope_scaling_is_refused_for_other_encodings(model_dirs, capsys):
    code = main(["eval", str(model_dirs["alibi"]), "--lengths", "64", "--rope-scaling", "linear", "--rope-factor", "2"])
    assert code == 2
    assert "RoPE models only" in capsys.readouterr().err


def test_cli_writes_eval_json_with_unsupported_rows(model_dirs, capsys):
    directory = model_dirs["learned"]
    code = main(["eval", str(directory), "--lengths", "32,64,128", "--data", str(model_dirs["data"]),
                 "--max-windows", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "unsupported" in printed and "| 32 (train) |" in printed
    # other data than the model was trained on: a variant, never the model's own eval.json
    assert not (directory / "eval.json").exists()
    evaluation = json.loads((directory / "eval_variants" / "data-text.json").read_text())
    assert evaluation["position_encoding"] == "learned" and evaluation["train_length"] == 32
    assert evaluation["stride"] is None and evaluation["rope_scaling"] is None
    assert evaluation["data"]["kind"] == "local" and evaluation["tasks"] == [] and evaluation["variant"] == "data-text"
    rows = {r["eval_length"]: r for r in evaluation["results"]}
    assert set(rows[32]) >= {"eval_length", "perplexity", "loss", "num_tokens", "status", "reason"}
    assert rows[32]["status"] == rows[64]["status"] == "ok" and rows[32]["num_tokens"] == 3 * 31
    assert rows[128]["status"] == "unsupported" and rows[128]["perplexity"] is None


def test_rope_scaling_at_eval_time_changes_rope_results(model_dirs, tmp_path):
    common = dict(data=str(model_dirs["data"]), max_windows=2, show_progress=False)
    lengths = [32, 64]
    plain = evaluate_model_dir(model_dirs["rope"], lengths, output=tmp_path / "plain.json", **common)
    linear = evaluate_model_dir(model_dirs["rope"], lengths, rope_scaling="linear", rope_factor=4.0,
                                output=tmp_path / "linear.json", **common)
    dynamic = evaluate_model_dir(model_dirs["rope"], lengths, rope_scaling="dynamic", output=tmp_path / "dynamic.json", **common)
    yarn = evaluate_model_dir(model_dirs["rope"], lengths, rope_scaling="yarn", rope_factor=2.0, output=tmp_path / "yarn.json", **common)
    ppl = {name: [r["perplexity"] for r in e["results"]] for name, e in
           (("plain", plain), ("linear", linear), ("dynamic", dynamic), ("yarn", yarn))}
    assert yarn["rope_scaling"] == {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}
    assert ppl["yarn"][0] != pytest.approx(ppl["plain"][0], rel=1e-6)  # YaRN also scales cos/sin (attention temperature): every length changes
    assert linear["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    # dynamic NTK is anchored at the training length (32): unchanged up to it, different beyond; factor 64 / 32
    assert dynamic["rope_scaling"] == {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 32}
    assert ppl["linear"][0] != pytest.approx(ppl["plain"][0], rel=1e-6)
    assert ppl["dynamic"][0] == pytest.approx(ppl["plain"][0], rel=1e-6)
    assert ppl["dynamic"][1] != pytest.approx(ppl["plain"][1], rel=1e-6)
    assert json.loads((tmp_path / "linear.json").read_text())["rope_scaling"]["rope_type"] == "linear"


def test_eval_json_holds_only_the_models_own_measurement(model_dirs, tmp_path, capsys):
    directory = build_model_dir(tmp_path / "model", "rope", data=str(model_dirs["data"]))  # trained on that text
    common = ["--lengths", "32", "--max-windows", "2", "--no-progress"]
    assert main(["eval", str(directory), *common]) == 0
    plain = (directory / "eval.json").read_bytes()
    assert json.loads(plain)["variant"] is None and json.loads(plain)["data"]["kind"] == "local"
    other = write_text_folder(tmp_path / "other")
    assert main(["eval", str(directory), *common, "--rope-scaling", "yarn", "--rope-factor", "2"]) == 0
    assert main(["eval", str(directory), *common, "--data", str(other)]) == 0
    assert "eval_variants/data-other.json" in capsys.readouterr().out
    assert (directory / "eval.json").read_bytes() == plain  # untouched by both variants
    assert sorted(p.name for p in (directory / "eval_variants").iterdir()) == ["data-other.json", "rope-yarn.json"]


def _drop_a_tensor(folder):
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    weights.pop(sorted(weights)[-1])
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop_a_tensor, "do not match its config.json"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500]), "cannot load the model"),
        (lambda d: (d / "model.safetensors").write_bytes(b""), "cannot load the model"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage" * 20), "cannot load the model"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), "got a JSON list"),
        (lambda d: (d / "config.json").write_bytes(b"\xff\xfe{"), "not UTF-8"),
        (lambda d: (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text()[:300]), "cannot load the tokenizer"),
        (lambda d: (d / "train_summary.json").write_text(""), "train_summary.json: the file is empty"),
    ],
)
def test_a_damaged_model_folder_is_one_clear_line(model_dirs, tmp_path, capsys, damage, message):
    directory = build_model_dir(tmp_path / "model", "alibi")
    damage(directory)
    capsys.readouterr()
    assert main(["eval", str(directory), "--lengths", "32", "--data", str(model_dirs["data"]), "--max-windows", "1",
                 "--no-progress"]) == 2
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]
    assert last.startswith("hf-posenc eval: error:") and message in last and "Traceback" not in error, error


def test_an_output_path_that_cannot_be_written_is_refused_before_the_model_loads(model_dirs, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for output, message in ((tmp_path / "file" / "eval.json", "is a file, not a folder"), (tmp_path, "is a folder")):
        assert main(["eval", str(model_dirs["alibi"]), "--lengths", "32", "--output", str(output), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
