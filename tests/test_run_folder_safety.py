"""Nothing saved is lost: no pickle in checkpoints, a lock, --overwrite and --resume that change no file until safe."""

import hashlib
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file

import hf_posenc  # noqa: F401
from hf_posenc.data.corpus import embedded_corpus_root
from hf_posenc.errors import UsageError
from hf_posenc.run_folder import LOCK_FILE, RunLock, read_metrics
from hf_posenc.train.checkpoints import complete_checkpoints
from hf_posenc.train.engine import StopTraining, train
from hf_posenc.train.run_config import RunConfig

SOURCE_MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py")


def tiny_config(corpus, cache_dir, **training) -> RunConfig:
    section = {"max_steps": 4, "per_device_batch_size": 4, "lr": 1e-2, "warmup_steps": 1, "logging_steps": 1,
               "eval_steps": 0, "eval_max_batches": 1, "save_steps": 2, "save_total_limit": 3, "report_to": "none",
               "cpu_threads": 1}
    section.update(training)
    return RunConfig.from_dict({
        "model": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "max_position_embeddings": 64},
        "data": {"name": str(corpus), "block_size": 32},
        "tokenizer": {"vocab_size": 300, "cache_dir": str(cache_dir)},
        "training": section,
    })


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One finished 4-step run with checkpoints at steps 2 and 4 (tests work on copies of it)."""
    root = tmp_path_factory.mktemp("safety")
    corpus = root / "corpus"
    corpus.mkdir()
    for name in SOURCE_MODULES:
        (corpus / f"{name}.txt").write_text((embedded_corpus_root() / name).read_text())
    config = tiny_config(corpus, root / "cache")
    train(config, root / "run", show_progress=False)
    return config, root / "run"


@pytest.fixture()
def run(base, tmp_path):
    config, folder = base
    shutil.copytree(folder, tmp_path / "run")
    return config, tmp_path / "run"


def snapshot(folder):
    """Every file under ``folder`` with the hash of its bytes (the lock file only records who last held it)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def test_checkpoints_hold_no_pickle_and_resume_never_unpickles(run, monkeypatch):
    config, folder = run
    for _, checkpoint in complete_checkpoints(folder):
        assert {p.suffix for p in checkpoint.iterdir()} <= {".safetensors", ".json"}, list(checkpoint.iterdir())

    def forbidden(*args, **kwargs):
        raise AssertionError("resume unpickled something")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    (folder / "checkpoints" / "checkpoint-4").rename(folder / "checkpoints" / "gone")
    expected = load_file(folder / "model.safetensors")
    train(config.with_overrides({"training.max_steps": 4}), folder, resume=True, show_progress=False)
    resumed = load_file(folder / "model.safetensors")
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)  # step 2 -> 4 again, bit-exact


def test_an_old_pickle_checkpoint_is_refused_and_nothing_changes(run):
    config, folder = run
    (folder / "checkpoints" / "checkpoint-4" / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps({"x": 1}))
    before = snapshot(folder)
    with pytest.raises(UsageError, match=r"checkpoint-4.*custom_checkpoint_0\.pkl.*arbitrary code"):
        train(config, folder, resume=True, show_progress=False)
    assert snapshot(folder) == before


def test_a_refused_resume_changes_no_file(run):
    config, folder = run
    before = snapshot(folder)
    with pytest.raises(UsageError, match="cannot resume: model.num_hidden_layers"):
        train(config.with_overrides({"model.num_hidden_layers": 3}), folder, resume=True, show_progress=False)
    with pytest.raises(UsageError, match="cannot resume: the global batch"):
        train(config.with_overrides({"training.per_device_batch_size": 2}), folder, resume=True, show_progress=False)
    assert snapshot(folder) == before


def test_resume_skips_an_unreadable_newest_checkpoint_and_a_partial_metrics_line(run, capsys):
    config, folder = run
    expected = load_file(folder / "model.safetensors")
    optimizer = folder / "checkpoints" / "checkpoint-4" / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # a disk error / truncated copy
    with open(folder / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "lo')  # a row cut short by a kill
    capsys.readouterr()
    train(config, folder, resume=True, show_progress=False)
    err = capsys.readouterr().err
    assert "Skipping checkpoint" in err and "checkpoint-4" in err and "optimizer.safetensors" in err
    assert "checkpoint-2 (step 2)" in err
    rows, skipped = read_metrics(folder / "metrics.jsonl")
    assert skipped == 0 and [row["step"] for row in rows if "loss" in row] == [1, 2, 3, 4]
    resumed = load_file(folder / "model.safetensors")
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_overwrite_keeps_the_earlier_run_until_the_new_one_has_a_checkpoint(run):
    config, folder = run
    before = snapshot(folder)
    with pytest.raises(UsageError, match="vocab_size"):  # refused after data preparation
        train(config.with_overrides({"model.vocab_size": 100}), folder, overwrite=True, show_progress=False)
    assert snapshot(folder) == before

    def fail_at_step_one(row):
        if row.get("step") == 1:
            raise RuntimeError("simulated crash before the first checkpoint")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, folder, overwrite=True, show_progress=False, callbacks=[fail_at_step_one])
    assert snapshot(folder) == before  # the earlier run is back, byte for byte

    def stop(row):
        if row.get("step") == 3:  # after the step-2 checkpoint
            raise StopTraining

    train(config.with_overrides({"training.lr": 5e-3}), folder, overwrite=True, show_progress=False, callbacks=[stop])
    assert not list(folder.glob(".previous-run-*")) and [s for s, _ in complete_checkpoints(folder)] == [2]


def test_a_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(run):
    config, folder = run
    with RunLock(folder):
        with pytest.raises(UsageError, match=r"in use by another run \(pid \d+ on host "):
            train(config, folder, resume=True, show_progress=False)
    (folder / LOCK_FILE).write_text("pid 999999 on host elsewhere\n")  # left by a killed run: nobody holds it
    train(config, folder, resume=True, show_progress=False)


def test_a_refused_run_leaves_no_folder_behind(base, tmp_path):
    config, _ = base
    with pytest.raises(UsageError, match="vocab_size"):
        train(config.with_overrides({"model.vocab_size": 100}), tmp_path / "new", show_progress=False)
    assert not (tmp_path / "new").exists()


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(base, tmp_path):
    config, _ = base
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        train(config, tmp_path / "file" / "run", show_progress=False)


def test_a_checkpoint_without_this_process_rng_state_resumes_and_says_so(run, capsys):
    config, folder = run
    (folder / "checkpoints" / "checkpoint-4" / "rng_state_0.safetensors").unlink()  # as if written by other ranks
    capsys.readouterr()
    train(config, folder, resume=True, show_progress=False)
    assert "has no RNG state for process 0" in capsys.readouterr().err
