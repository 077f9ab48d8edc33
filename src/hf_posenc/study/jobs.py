"""The work of a ``compare`` study as independent jobs, run one after another or in worker processes.

A job is one language model of one seed (train it unless finished, then every evaluation that is not current),
or one task model, or one passkey model. Jobs share nothing but read-only caches (the tokenizer and the tokenized
corpus), each writes only its own folder, and each is seeded on its own, so running them in ``workers``
processes gives the same files as running them in turn; it only uses more CPU cores. The caches are built once
in the parent before the workers start, so no two processes write them at the same time.

Every worker runs its jobs with ``threads`` torch threads (default: the cores divided among the workers): the
study's models are small, and two processes with one thread each are faster than one process with two.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from .. import run_folder
from .variants import StudyModel

if TYPE_CHECKING:
    from ..train.run_config import RunConfig
    from .compare import CompareConfig, EvalSettings

SLIDING_VARIANT = "sliding"  # eval_variants/sliding.json: the sliding-window evaluation of a compare model
PHASES = ("train", "eval", "tasks", "passkey")


@dataclass(frozen=True)
class StudyJob:
    """One independent piece of a study: ``kind`` is "model" (a language model), "tasks" or "passkey"."""

    kind: str
    seed_index: int
    seed: int
    model: StudyModel  # for tasks and passkey: the plain encoding

    def tag(self, index: int, total: int) -> str:
        return f"[{index}/{total}, seed {self.seed}] {self.model.label}" + ("" if self.kind == "model" else f" {self.kind}")


@dataclass
class JobReport:
    """What a job did: wall and CPU seconds per phase, and what it reused instead of recomputing."""

    phases: dict[str, dict] = field(default_factory=dict)
    reused: dict[str, list[str]] = field(default_factory=lambda: {phase: [] for phase in PHASES})

    @contextmanager
    def phase(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            entry = self.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] += time.perf_counter() - wall
            entry["cpu_s"] += time.process_time() - cpu

    def merge(self, other: JobReport) -> None:
        for name, entry in other.phases.items():
            mine = self.phases.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            mine["wall_s"] += entry["wall_s"]
            mine["cpu_s"] += entry["cpu_s"]
        for name, items in other.reused.items():
            self.reused.setdefault(name, []).extend(items)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def study_jobs(config: CompareConfig, skip_tasks: bool) -> list[StudyJob]:
    """Every job of the study, the long ones (language models) first so that workers finish together."""
    seeds = list(enumerate(config.seed_values()))
    jobs = [StudyJob("model", index, seed, model) for index, seed in seeds for model in config.models()]
    if not skip_tasks:
        for kind, settings in (("tasks", config.tasks), ("passkey", config.passkey)):
            if settings is not None:
                jobs += [StudyJob(kind, index, seed, StudyModel(encoding))
                         for index, seed in seeds for encoding in config.encodings]
    return jobs


def default_workers(jobs: int) -> int:
    """One worker per CPU core this process may use, and no more than there are jobs."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, jobs))


def run_jobs(config: CompareConfig, output_dir: Path, jobs: list[StudyJob], *, workers: int, overwrite: bool,
             show_progress: bool) -> JobReport:
    """Run ``jobs`` in this process (``workers == 1``, with per-job progress bars) or in ``workers`` processes
    (a progress bar over jobs). The first failing job stops the study: the jobs not started are cancelled."""
    report = JobReport()
    if workers <= 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs, 1):
            report.merge(run_job(config, output_dir, job, job.tag(index, len(jobs)), overwrite, show_progress))
        return report
    _build_shared_caches(config, show_progress)
    threads = config.threads or max(1, (os.cpu_count() or 1) // workers)
    say(f"running {len(jobs)} jobs in {workers} worker processes ({threads} torch thread(s) each)")
    context = get_context("spawn")  # no fork of a process that holds torch's thread pools
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(run_job, config, output_dir, job, job.tag(index, len(jobs)), overwrite, False): job
                   for index, job in enumerate(jobs, 1)}
        with tqdm(total=len(jobs), desc="jobs", unit="job", disable=not show_progress) as bar:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    report.merge(future.result())
                    bar.update(1)
    return report


def _init_worker(threads: int) -> None:
    import torch
    from transformers.utils import logging as transformers_logging

    torch.set_num_threads(threads)
    transformers_logging.disable_progress_bar()  # the parent's bar over jobs is the progress; no per-load bars


def _build_shared_caches(config: CompareConfig, show_progress: bool) -> None:
    """Tokenizer and tokenized corpus, once, before the workers read them (they would race to write them)."""
    from ..train.engine import prepare_data

    if config.models():
        with_training_config = config.run_config_for(config.models()[0], Path(os.devnull), 0)
        prepare_data(with_training_config, show_progress=show_progress)


def run_job(config: CompareConfig, output_dir: Path, job: StudyJob, tag: str, overwrite: bool,
            show_progress: bool) -> JobReport:
    """Run one job (in this process or a worker) and report its times and what it reused."""
    report = JobReport()
    seed_dir = config.seed_dir(output_dir, job.seed_index)
    if job.kind == "model":
        run = config.run_config_for(job.model, seed_dir / job.model.folder_name, job.seed_index)
        _train_and_evaluate(config, run, job.model, job.seed_index, tag, report, overwrite, show_progress)
    elif job.kind in ("tasks", "passkey"):
        _synthetic_model(config, seed_dir, job, tag, report, overwrite, show_progress)
    else:
        raise ValueError(f"unknown study job kind {job.kind!r}")
    return report


def _reused_name(name: str, seed_index: int, seed: int) -> str:
    """The name in timings.json "reused": the folder name, and the seed after the first."""
    return name if seed_index == 0 else f"{name}@seed{seed}"


def _train_and_evaluate(config: CompareConfig, run: RunConfig, model: StudyModel, seed_index: int, tag: str,
                        report: JobReport, overwrite: bool, show_progress: bool) -> None:
    """Train one (model, seed) unless finished, then every evaluation of it that is not current."""
    from ..evaluation.perplexity import evaluate_model_dir
    from ..evaluation.position_loss import loss_by_position
    from ..train.engine import train

    model_dir = Path(run.output_dir)
    summary = model_dir / run_folder.SUMMARY_FILE
    label = _reused_name(model.folder_name, seed_index, run.training.seed)
    if summary.is_file() and not overwrite:
        say(f"{tag}: reusing the trained model in {model_dir}")
        report.reused["train"].append(label)
    else:
        say(f"{tag}: training ({run.training.max_steps} steps)")
        partial = (model_dir / "run_config.yaml").is_file() and not overwrite
        with report.phase("train"):
            train(run, model_dir, resume=partial, overwrite=overwrite, show_progress=show_progress)
    settings = config.eval
    evaluations = [(None, settings.stride, None, label)]  # (rope scaling, stride, eval variant, name in "reused")
    evaluations += [(scaling, settings.stride, f"rope-{scaling}", f"{label}+{scaling}")
                    for scaling in rope_scalings(config, model)]
    if settings.sliding_stride is not None:
        evaluations.append((None, settings.sliding_stride, SLIDING_VARIANT, f"{label}+sliding"))
    for scaling, stride, variant, name in evaluations:
        path = run_folder.default_eval_path(model_dir, variant)
        if not overwrite and _eval_is_current(path, summary, settings, scaling, stride):
            report.reused["eval"].append(name)
            continue
        say(f"{tag}: perplexity at {settings.lengths}" + (f" with RoPE {scaling} scaling" if scaling else "")
            + (f", sliding windows (stride {stride})" if stride else ""))
        with report.phase("eval"):
            evaluate_model_dir(model_dir, settings.lengths, stride=stride, max_tokens=settings.max_tokens,
                               max_windows=settings.max_windows, batch_size=settings.batch_size, rope_scaling=scaling,
                               output=path, show_progress=show_progress)
    position_file = model_dir / run_folder.POSITION_LOSS_FILE
    if settings.position_loss and (overwrite or not _position_loss_is_current(position_file, summary, settings)):
        with report.phase("eval"):
            loss_by_position(model_dir, settings.lengths, max_windows=settings.position_loss_windows,
                             batch_size=settings.batch_size)


def _synthetic_model(config: CompareConfig, seed_dir: Path, job: StudyJob, tag: str, report: JobReport,
                     overwrite: bool, show_progress: bool) -> None:
    """A task model or a passkey model (``job.kind``, also its folder's name): trained and tested unless its
    folder holds a result with the same settings."""
    from ..evaluation.passkey import passkey_dir_is_complete, run_passkey_study
    from ..evaluation.tasks import run_task_study, task_dir_is_complete

    encoding = job.model.encoding
    if job.kind == "tasks":
        settings = config.task_settings_for(job.seed_index)
        is_complete, run_study = task_dir_is_complete, run_task_study
        what = (f"synthetic tasks {settings.tasks} (train lengths {settings.train_min_length}-"
                f"{settings.train_max_length})")
    else:
        settings = config.passkey_settings_for(job.seed_index)
        is_complete, run_study = passkey_dir_is_complete, run_passkey_study
        what = (f"passkey retrieval (trained on contexts up to {settings.train_context}, tested at "
                f"{settings.test_contexts})")
    folder = seed_dir / job.kind / encoding
    if not overwrite and is_complete(folder, encoding, settings):
        report.reused[job.kind].append(_reused_name(encoding, job.seed_index, settings.seed))
        return
    say(f"{tag}: {what}")
    with report.phase(job.kind):
        run_study(encoding, settings, folder, overwrite=overwrite, show_progress=show_progress)


def rope_scalings(config: CompareConfig, model: StudyModel) -> list[str]:
    """The eval-time RoPE scalings of a model: the plain rope model's only (a randomized variant has trained the
    positions it is evaluated at, so it needs no scaling)."""
    return config.eval.rope_scaling if model.encoding == "rope" and not model.randomized else []


def _written_after_training(path: Path, summary: Path) -> bool:
    """An evaluation file counts only if it was written after the model it measures was (re)trained."""
    return path.is_file() and summary.is_file() and path.stat().st_mtime >= summary.stat().st_mtime


def _eval_is_current(path: Path, summary: Path, settings: EvalSettings, rope_scaling: str | None,
                     stride: int | None) -> bool:
    if not _written_after_training(path, summary):
        return False
    saved = run_folder.read_eval(path)
    return (
        [row.get("eval_length") for row in saved.get("results", [])] == settings.lengths
        and saved.get("stride") == stride
        and saved.get("max_tokens") == settings.max_tokens
        and saved.get("max_windows") == settings.max_windows
        and (saved.get("rope_scaling") or {}).get("rope_type") == rope_scaling
    )


def _position_loss_is_current(path: Path, summary: Path, settings: EvalSettings) -> bool:
    if not _written_after_training(path, summary):
        return False
    saved = run_folder.read_position_loss(path)
    return (saved.get("max_windows") == settings.position_loss_windows
            and [row.get("eval_length") for row in saved.get("results", [])] == settings.lengths)


__all__ = ["JobReport", "SLIDING_VARIANT", "StudyJob", "default_workers", "rope_scalings", "run_job", "run_jobs",
           "study_jobs"]
