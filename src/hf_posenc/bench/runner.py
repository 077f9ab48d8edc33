"""`hf-posenc bench`: training and decoding speed of every encoding next to transformers' own models.

One run builds every model, warms each up, then times them in interleaved rounds (model A, B, C, ... then again
in a rotated order), so that a change of machine load hits all models alike; each figure is the median of the
timed steps. Warmup (and compilation) is never timed. Results are records (dicts), one per
(model, mode, variant): see ``docs/benchmark.md`` for the fields.

Sections: ``train`` (tokens/s, MFU on GPU, peak memory), ``decode`` (``generate`` with the cache, batch 1 and a
larger batch), ``scaling`` (time and memory against sequence length, per encoding).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from dataclasses import dataclass, field

import torch

from .measure import (
    DecodeJob,
    TrainJob,
    free_device_memory,
    is_out_of_memory,
    measure_peak,
    median,
    time_once,
)
from .models import (
    MODES,
    BenchPreset,
    build_model,
    count_parameters,
    model_names,
    resolve_attn_implementation,
    train_flops_per_token,
)
from .scaling import ScalingJob
from ..errors import SettingsError

# bf16 dense matmul ceiling used for MFU unless BenchOptions.peak_tflops says otherwise: 8192^3 on an H200 (docs/benchmark.md, reference measurements).
DEFAULT_PEAK_TFLOPS = 798.0
# Timed rounds run even when the time budget is spent (compilation can eat it before the first round).
MIN_ROUNDS = 3


@dataclass
class BenchOptions:
    preset: BenchPreset
    encodings: list[str]
    references: list[str] | None = None  # None: automatic (hf:llama, + hf:gpt2 with learned, + hf:bloom with alibi)
    modes: tuple[str, ...] = MODES
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    attn: str = "auto"
    compile_models: list[str] = field(default_factory=list)  # models that get a compiled variant
    eager_too: bool = True  # keep the eager variant of compiled models
    warmup_steps: int = 2
    steps: int = 5  # timed rounds (one step per model per round)
    decode_repeats: int = 2
    decode_caches: tuple[str, ...] = ("dynamic",)
    scaling_encodings: list[str] | None = None  # None: the same as encodings
    scaling_kinds: tuple[str, ...] = ("eval", "train")
    scaling_repeats: int = 2
    peak_tflops: float = DEFAULT_PEAK_TFLOPS
    time_budget_s: float | None = None
    seed: int = 0
    progress: bool = True


class Deadline:
    def __init__(self, budget_s: float | None):
        self.end = None if budget_s is None else time.monotonic() + budget_s

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() > self.end


def environment(options: BenchOptions) -> dict:
    import transformers

    device_name = torch.cuda.get_device_name(options.device) if options.device.type == "cuda" else platform.processor()
    return {
        "device": options.device.type,
        "device_name": device_name or platform.machine(),
        "dtype": str(options.dtype).replace("torch.", ""),
        "preset": options.preset.name,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # other processes' load when the run started (1-minute load average): timings on a busy machine vary
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _progress(iterable, options: BenchOptions, description: str, total: int | None = None):
    if not options.progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=description, total=total, leave=False)


def _failure(error: BaseException) -> tuple[str, str]:
    status = "oom" if is_out_of_memory(error) else "error"
    return status, f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


def run_interleaved(jobs: dict, options: BenchOptions, deadline: Deadline, description: str) -> dict:
    """Warm up every job, measure its peak memory once, then time one run per job per round, rotating the order.

    Returns ``{key: {"times_s", "warmup_s", "peak_memory_bytes", "memory_method", "status", "reason"}}``.
    A job that fails is dropped from later rounds and reported with its error.
    """
    results = {key: {"times_s": [], "warmup_s": [], "status": "ok", "reason": None} for key in jobs}
    alive = []
    for key, job in _progress(jobs.items(), options, f"{description}: warmup", total=len(jobs)):
        try:
            for _ in range(max(1, options.warmup_steps)):
                results[key]["warmup_s"].append(time_once(job, options.device))
            peak, method = measure_peak(job, options.device)
            results[key].update(peak_memory_bytes=peak, memory_method=method)
            alive.append(key)
        except Exception as error:  # noqa: BLE001 - one model failing must not stop the benchmark
            results[key]["status"], results[key]["reason"] = _failure(error)
            free_device_memory(options.device)
    rounds = options.steps if jobs else 0
    for round_index in _progress(range(rounds), options, f"{description}: timed rounds"):
        if deadline.passed() and round_index >= MIN_ROUNDS:  # a median needs a few rounds, budget or not
            for key in alive:
                results[key]["reason"] = f"time budget reached after {round_index} timed rounds"
            break
        shift = round_index % max(1, len(alive))
        for key in alive[shift:] + alive[:shift]:
            if results[key]["status"] != "ok":
                continue
            try:
                results[key]["times_s"].append(time_once(jobs[key], options.device))
            except Exception as error:  # noqa: BLE001
                results[key]["status"], results[key]["reason"] = _failure(error)
    return results


def _base_record(env: dict, model: str, mode: str, **fields) -> dict:
    return {"model": model, "mode": mode, **env, **fields}


def _measured(result: dict) -> dict:
    """The fields every timed record takes from ``run_interleaved``'s result for its job."""
    return {
        "warmup_time_s": result["warmup_s"],
        "peak_memory_bytes": result.get("peak_memory_bytes"),
        "memory_method": result.get("memory_method"),
        "status": result["status"],
        "reason": result["reason"],
    }


def run_train(options: BenchOptions, env: dict, deadline: Deadline) -> list[dict]:
    preset = options.preset
    names = model_names(options.encodings, options.references)
    variants = []
    for name in names:
        compiled = name in options.compile_models
        if not compiled or options.eager_too:
            variants.append((name, False))
        if compiled:
            variants.append((name, True))
    models, jobs, infos = {}, {}, {}
    for name, compiled in variants:
        attn = resolve_attn_implementation(options.attn, name, options.device, "train", preset.shape)
        try:
            if name not in models:
                models[name] = build_model(name, preset.shape, attn, options.device, options.dtype, options.seed)
            jobs[(name, compiled)] = TrainJob(
                models[name], preset.train_batch, preset.train_seq_len, options.device, compiled, options.seed
            )
            infos[(name, compiled)] = attn
        except Exception as error:  # noqa: BLE001
            infos[(name, compiled)] = (attn, *_failure(error))
    results = run_interleaved(jobs, options, deadline, "train")

    tokens_per_step = preset.train_batch * preset.train_seq_len
    records = []
    for name, compiled in variants:
        key = (name, compiled)
        info = infos[key]
        record = _base_record(
            env,
            name,
            "train",
            compiled=compiled,
            attn_implementation=info if isinstance(info, str) else info[0],
            batch=preset.train_batch,
            seq_len=preset.train_seq_len,
        )
        if not isinstance(info, str):  # failed to build
            record.update(tokens_per_s=None, peak_memory_bytes=None, status=info[1], reason=info[2])
            records.append(record)
            continue
        result = results[key]
        step_time = median(result["times_s"])
        model = models[name]
        flops = train_flops_per_token(
            count_parameters(model), preset.shape["num_hidden_layers"], preset.shape["hidden_size"], preset.train_seq_len
        )
        tokens_per_s = tokens_per_step / step_time if step_time else None
        record.update(
            tokens_per_s=tokens_per_s,
            step_time_s=step_time,
            step_time_min_s=min(result["times_s"]) if result["times_s"] else None,
            step_times_s=result["times_s"],
            timed_steps=len(result["times_s"]),
            compile_time_s=(result["warmup_s"][0] - step_time) if compiled and result["warmup_s"] and step_time else None,
            num_parameters=count_parameters(model),
            flops_per_token=flops,
            mfu=(tokens_per_s * flops / (options.peak_tflops * 1e12))
            if tokens_per_s and options.device.type == "cuda"
            else None,
            peak_tflops=options.peak_tflops if options.device.type == "cuda" else None,
            final_loss=float(jobs[key].last_loss) if jobs[key].last_loss is not None else None,
            **_measured(result),
        )
        records.append(record)
    del jobs, models
    free_device_memory(options.device)
    return records


def run_decode(options: BenchOptions, env: dict, deadline: Deadline) -> list[dict]:
    preset = options.preset
    names = model_names(options.encodings, options.references)
    models, jobs, attns, failures = {}, {}, {}, {}
    for name in names:
        attn = resolve_attn_implementation(options.attn, name, options.device, "decode", preset.shape)
        attns[name] = attn
        try:
            models[name] = build_model(name, preset.shape, attn, options.device, options.dtype, options.seed).eval()
        except Exception as error:  # noqa: BLE001
            failures[name] = _failure(error)
            continue
        for cache in options.decode_caches:
            for batch in preset.decode_batches:
                compiled = name in options.compile_models
                jobs[(name, cache, batch)] = DecodeJob(
                    models[name],
                    batch,
                    preset.decode_prompt_len,
                    preset.decode_new_tokens,
                    cache,
                    options.device,
                    compiled,
                    options.seed,
                )
    saved = dataclasses.replace(options, steps=options.decode_repeats)
    results = run_interleaved(jobs, saved, deadline, "decode")
    records = []
    for name in names:
        for cache in options.decode_caches:
            for batch in preset.decode_batches:
                record = _base_record(
                    env,
                    name,
                    "decode",
                    attn_implementation=attns[name],
                    cache=cache,
                    batch=batch,
                    prompt_len=preset.decode_prompt_len,
                    new_tokens=preset.decode_new_tokens,
                    seq_len=preset.decode_prompt_len + preset.decode_new_tokens,
                )
                if name in failures:
                    record.update(compiled=False, tokens_per_s=None, peak_memory_bytes=None)
                    record["status"], record["reason"] = failures[name]
                    records.append(record)
                    continue
                job, result = jobs[(name, cache, batch)], results[(name, cache, batch)]
                call_time = median(result["times_s"])
                record.update(
                    compiled=job.compiled,
                    tokens_per_s=batch * preset.decode_new_tokens / call_time if call_time else None,
                    call_time_s=call_time,
                    call_times_s=result["times_s"],
                    **_measured(result),
                )
                records.append(record)
    del jobs, models
    free_device_memory(options.device)
    return records


def run_scaling(options: BenchOptions, env: dict, deadline: Deadline) -> list[dict]:
    """Per encoding, lengths in increasing order; after an out-of-memory, longer lengths of that kind are skipped."""
    preset = options.preset
    lengths = sorted(preset.scaling_lengths)
    encodings = options.scaling_encodings if options.scaling_encodings is not None else options.encodings
    records = []
    total = len(encodings) * len(lengths) * len(options.scaling_kinds)
    bar = _progress(range(total), options, "scaling")
    ticks = iter(bar)
    for encoding in encodings:
        name = f"hf_posenc:{encoding}"
        attn = resolve_attn_implementation(options.attn, name, options.device, "scaling", preset.shape)
        try:
            # learned positions need a table as long as the longest sequence (recorded in the note)
            model = build_model(
                name, preset.shape, attn, options.device, options.dtype, options.seed, max_position_embeddings=max(lengths)
            )
            build_error = None
        except Exception as error:  # noqa: BLE001
            model, build_error = None, _failure(error)
        note = "max_position_embeddings raised to the longest length" if encoding == "learned" else None
        for kind in options.scaling_kinds:
            stop_reason = build_error
            for seq_len in lengths:
                next(ticks, None)
                record = _base_record(
                    env, name, f"{kind}_scaling", attn_implementation=attn, compiled=False, batch=1, seq_len=seq_len
                )
                record["note"] = note
                if stop_reason is None and deadline.passed():
                    stop_reason = ("skipped", "time budget reached")
                if stop_reason is not None:
                    record.update(tokens_per_s=None, peak_memory_bytes=None, time_s=None)
                    record["status"], record["reason"] = stop_reason
                    records.append(record)
                    continue
                model.train(kind == "train")
                job = ScalingJob(model, seq_len, kind, options.device, options.seed)
                try:
                    time_once(job, options.device)  # warmup
                    times = [time_once(job, options.device) for _ in range(max(1, options.scaling_repeats))]
                    peak, method = measure_peak(job, options.device)
                    step = median(times)
                    record.update(
                        tokens_per_s=seq_len / step,
                        time_s=step,
                        times_s=times,
                        peak_memory_bytes=peak,
                        memory_method=method,
                        status="ok",
                        reason=None,
                    )
                except Exception as error:  # noqa: BLE001
                    status, reason = _failure(error)
                    record.update(tokens_per_s=None, peak_memory_bytes=None, time_s=None, status=status, reason=reason)
                    stop_reason = (status, f"skipped after {status} at seq_len={seq_len}")
                    del job
                    free_device_memory(options.device)
                records.append(record)
        del model
        free_device_memory(options.device)
    if hasattr(bar, "close"):
        bar.close()
    return records


def run_benchmark(options: BenchOptions) -> list[dict]:
    """Run the selected sections and return their records (see the module docstring)."""
    unknown = [mode for mode in options.modes if mode not in MODES]
    if unknown:
        raise SettingsError(f"modes must be among {list(MODES)}, got {unknown}", field="modes")
    if options.compile_models:
        raise_compile_limit()
    env = environment(options)
    deadline = Deadline(options.time_budget_s)
    records = []
    if "train" in options.modes:
        records += run_train(options, env, deadline)
    if "decode" in options.modes:
        records += run_decode(options, env, deadline)
    if "scaling" in options.modes:
        records += run_scaling(options, env, deadline)
    return records


def raise_compile_limit() -> None:
    """Each compiled model instance adds a cache entry for the same forward code: allow more than the default 8."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
