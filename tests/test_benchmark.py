"""`hf-posenc bench`: records, tables, targets, failure handling and CLI errors (no timing assertions)."""

import json
import subprocess
import sys

import pytest
import torch

from hf_posenc import cli
from hf_posenc.model.encodings_hf_posenc import available_position_encodings
from hf_posenc.bench.runner import BenchOptions, run_benchmark
from hf_posenc.bench.measure import PeakMemory
from hf_posenc.bench.models import (
    PRESETS,
    build_model,
    count_parameters,
    get_preset,
    model_names,
    train_flops_per_token,
)
from hf_posenc.bench.report import add_ratios, evaluate_targets, format_table, paired_ratio

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")

# A very small workload on the tiny shape: seconds on CPU.
FAST_FLAGS = [
    "--preset", "tiny", "--seq-len", "32", "--batch", "2", "--steps", "2", "--warmup", "1",
    "--decode-new-tokens", "3", "--decode-prompt-len", "4", "--decode-batches", "1,2", "--decode-repeats", "1",
    "--scaling-lengths", "16,32", "--scaling-repeats", "1", "--no-progress", "--threads", "1", "--device", "cpu",
]


def test_flops_reproduce_the_anchor_mfu():
    """Reference measurements (docs/benchmark.md): transformers' Llama (134M) on an H200 at 798 TFLOP/s: 259.8k tok/s = 29.9%, 381.2k = 43.8%."""
    shape = PRESETS["small-125m"].shape
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        llama = build_model("hf:llama", shape, "sdpa", torch.device("meta"), torch.float32)
    flops = train_flops_per_token(count_parameters(llama), 12, 768, 2048)
    assert round(259.8e3 * flops / 798e12, 3) == 0.299
    assert round(381.2e3 * flops / 798e12, 3) == 0.438


def test_references_have_the_same_shape():
    shape = PRESETS["tiny"].shape
    with torch.device("meta"):
        sizes = {name: count_parameters(build_model(name, shape, "sdpa" if name != "hf:bloom" else "eager",
                                                    torch.device("meta"), torch.float32))
                 for name in ("hf_posenc:rope", "hf:llama", "hf:gpt2", "hf:bloom")}
    assert sizes["hf_posenc:rope"] == sizes["hf:llama"]  # identical Llama shape
    for name in ("hf:gpt2", "hf:bloom"):  # LayerNorm biases, GELU MLP: close, not equal
        assert abs(sizes[name] / sizes["hf:llama"] - 1) < 0.15


def test_model_list_pairs_references_with_encodings():
    assert model_names(["rope", "alibi"]) == ["hf_posenc:rope", "hf_posenc:alibi", "hf:llama", "hf:bloom"]
    assert model_names(["learned"]) == ["hf_posenc:learned", "hf:llama", "hf:gpt2"]
    assert model_names(["nope"], references=[]) == ["hf_posenc:nope"]


def test_cpu_peak_memory_sees_a_large_allocation():
    with PeakMemory(torch.device("cpu")) as meter:
        block = torch.ones(16 * 2**20)  # 64 MiB, touched
        del block
    assert meter.growth_bytes >= 48 * 2**20
    assert meter.method in ("cpu_rss_high_water_mark", "cpu_ru_maxrss")


def test_bench_end_to_end_on_cpu(tmp_path, capsys):
    output, summary = tmp_path / "bench.json", tmp_path / "summary.json"
    assert cli.main(["bench", *FAST_FLAGS, "--output", str(output), "--summary", str(summary)]) == 0
    records = json.loads(output.read_text())
    encodings = available_position_encodings()  # the default: every registered encoding
    assert {"sinusoidal", "learned", "rope", "alibi", "t5_bias", "nope"} <= set(encodings)
    models = [f"hf_posenc:{name}" for name in encodings] + ["hf:llama", "hf:gpt2", "hf:bloom"]
    train = [r for r in records if r["mode"] == "train"]
    decode = [r for r in records if r["mode"] == "decode"]
    scaling = [r for r in records if r["mode"] in ("eval_scaling", "train_scaling")]
    assert [r["model"] for r in train] == models
    assert len(decode) == 2 * len(models) and {r["batch"] for r in decode} == {1, 2}
    assert len(scaling) == len(encodings) * 2 * 2
    for record in train + decode + scaling:
        assert record["status"] == "ok", record
        assert record["tokens_per_s"] > 0 and record["peak_memory_bytes"] > 0
        assert record["device"] == "cpu" and record["dtype"] == "float32" and record["compiled"] is False
    assert all(r["mfu"] is None for r in train)  # MFU is a GPU figure
    assert next(r for r in train if r["model"] == "hf:bloom")["attn_implementation"] == "eager"
    assert next(r for r in train if r["model"] == "hf_posenc:nope")["ratio_vs_nope"] == 1.0
    assert all(r["cache"] == "dynamic" and r["new_tokens"] == 3 for r in decode)
    assert {r["seq_len"] for r in scaling} == {16, 32}
    targets = json.loads(summary.read_text())["targets"]
    assert any(t["target"] == "train eager: rope tokens/s vs hf:llama" for t in targets)
    printed = capsys.readouterr().out
    assert "Training" in printed and "Decoding" in printed and "Scaling" in printed and "Targets" in printed
    pytest.importorskip("matplotlib")
    assert (tmp_path / "bench_scaling.png").stat().st_size > 0


def options(**overrides):
    values = dict(preset=get_preset("tiny", train_seq_len=16, train_batch=1, decode_new_tokens=2, decode_prompt_len=4,
                                    decode_batches=(1,), scaling_lengths=(16, 32)),
                  encodings=["nope"], references=[], steps=1, warmup_steps=1, decode_repeats=1, scaling_repeats=1,
                  progress=False)
    values.update(overrides)
    return BenchOptions(**values)


def test_a_failing_model_is_reported_and_the_rest_still_run(monkeypatch):
    import hf_posenc.bench.runner as benchmark

    real_build = benchmark.build_model

    def build(name, *args, **kwargs):
        if name == "hf_posenc:alibi":
            raise RuntimeError("kernel not available")
        return real_build(name, *args, **kwargs)

    monkeypatch.setattr(benchmark, "build_model", build)
    records = run_benchmark(options(encodings=["nope", "alibi"], modes=("train",)))
    status = {r["model"]: (r["status"], r["reason"]) for r in records}
    assert status["hf_posenc:nope"] == ("ok", None)
    assert status["hf_posenc:alibi"] == ("error", "RuntimeError: kernel not available")


def test_scaling_stops_at_the_first_out_of_memory(monkeypatch):
    import hf_posenc.bench.scaling as scaling

    real_run = scaling.ScalingJob.run

    def run(self):
        if self.input_ids.shape[1] >= 32:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64 GiB")
        return real_run(self)

    monkeypatch.setattr(scaling.ScalingJob, "run", run)
    preset = get_preset("tiny", scaling_lengths=(16, 32, 64))
    records = run_benchmark(options(preset=preset, modes=("scaling",), scaling_kinds=("eval",)))
    assert [(r["seq_len"], r["status"]) for r in records] == [(16, "ok"), (32, "oom"), (64, "oom")]
    assert records[2]["reason"] == "skipped after oom at seq_len=32"


def test_time_budget_skips_the_remaining_lengths():
    records = run_benchmark(options(modes=("scaling",), scaling_kinds=("eval",), time_budget_s=1e-9))
    assert [r["status"] for r in records] == ["skipped", "skipped"]


def train_record(model, times, compiled=False, **fields):
    return {"model": model, "mode": "train", "compiled": compiled, "step_times_s": times,
            "tokens_per_s": 100 / (sorted(times)[len(times) // 2]), **fields}


def test_paired_ratio_cancels_load_changes_between_rounds():
    nope = train_record("hf_posenc:nope", [1.0, 2.0, 4.0])
    rope = train_record("hf_posenc:rope", [1.1, 2.2, 4.4])  # 10% slower in every round
    assert paired_ratio(rope, nope) == pytest.approx(1 / 1.1)
    add_ratios([nope, rope])
    assert rope["paired_ratio_vs_nope"] == pytest.approx(1 / 1.1)
    assert "0.91" in format_table([nope, rope])


def test_targets_on_gpu_records():
    gib = 2**30
    records = add_ratios([
        train_record("hf_posenc:nope", [1.0], peak_memory_bytes=10 * gib),
        train_record("hf_posenc:alibi", [1.05], peak_memory_bytes=12 * gib),
        train_record("hf_posenc:rope", [1.0], peak_memory_bytes=10 * gib),
        train_record("hf:llama", [1.0], peak_memory_bytes=10 * gib),
        train_record("hf:bloom", [3.0], peak_memory_bytes=20 * gib),
        train_record("hf_posenc:rope", [0.6], compiled=True, mfu=0.47),
        train_record("hf:llama", [0.7], compiled=True),
        {"model": "hf_posenc:alibi", "mode": "eval_scaling", "seq_len": 16384, "status": "ok"},
        {"model": "hf_posenc:t5_bias", "mode": "eval_scaling", "seq_len": 16384, "status": "oom"},
        {"model": "hf_posenc:rope", "mode": "decode", "batch": 1, "tokens_per_s": 120.0},
        {"model": "hf_posenc:rope", "mode": "decode", "batch": 1, "tokens_per_s": 40.0},
    ])
    met = {t["target"]: t["met"] for t in evaluate_targets(records, "cuda")}
    assert met["train eager: hf_posenc:alibi tokens/s vs nope"] is True  # 0.95 >= 0.9
    assert met["train eager: alibi tokens/s vs hf:bloom"] is True  # 3 / 1.05 >= 2
    assert met["train eager: alibi peak memory vs nope"] is False  # 1.2 > 1.1
    assert met["train compiled: rope tokens/s vs hf:llama"] is True
    assert met["train: compiled rope tokens/s vs eager hf:llama"] is True  # 1 / 0.6 >= 1.4
    assert met["train: compiled rope MFU"] is True
    assert met["eval at 16384 tokens fits: alibi"] is True
    assert met["eval at 16384 tokens fits: t5_bias"] is False
    assert met["decode batch 1: hf_posenc:rope best tokens/s"] is True  # 120 >= 85


@pytest.mark.parametrize("flags, message", [
    (["--preset", "huge"], "--preset must be one of"),
    (["--encodings", "rope,rotary"], "--encodings must be among"),
    (["--references", "hf:t5"], "--references must be among"),
    (["--modes", "train,serve"], "--modes must be"),
    (["--attn", "flash"], "--attn must be one of"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--decode-batches", "1,x"], "--decode-batches must be"),
    (["--decode-cache", "paged"], "--decode-cache must be"),
    (["--scaling-kinds", "infer"], "--scaling-kinds must be"),
    (["--compile-models", "hf:gpt3"], "--compile-models must be among"),
    (["--seq-len", "4096"], "learned positions cannot go past"),
    (["--peak-tflops", "-1"], "--peak-tflops must be positive"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
])
def test_bad_flags_are_refused_before_any_work(flags, message, capsys):
    assert cli.main(["bench", *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("hf-posenc bench: error: ") and message in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on machines without a GPU")
def test_gpu_only_flags_are_refused_on_cpu(capsys):
    assert cli.main(["bench", "--device", "cuda"]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
    assert cli.main(["bench", "--device", "cpu", "--measure-peak"]) == 2
    assert "--measure-peak needs a GPU" in capsys.readouterr().err


def test_benchmark_imports_nothing_the_gpu_machine_lacks():
    """The GPU machines have no datasets / evaluate / matplotlib: the benchmark must not import them to start."""
    code = (
        "import sys, hf_posenc.cli.bench as b, hf_posenc.bench.runner, hf_posenc.bench.report, "
        "hf_posenc.bench.agreement; b.build_options; "
        "bad = [m for m in ('datasets', 'evaluate', 'matplotlib', 'optuna') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_cuda
def test_bench_on_gpu_reports_mfu(tmp_path):
    output = tmp_path / "bench.json"
    flags = [f for f in FAST_FLAGS if f not in ("--device", "cpu")]
    assert cli.main(["bench", *flags, "--device", "cuda", "--modes", "train", "--encodings", "rope,alibi",
                     "--output", str(output)]) == 0
    records = json.loads(output.read_text())
    assert all(r["status"] == "ok" and r["mfu"] > 0 and r["dtype"] == "bfloat16" for r in records)
    assert next(r for r in records if r["model"] == "hf_posenc:alibi")["attn_implementation"] == "flex_attention"
