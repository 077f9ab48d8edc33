"""Causal-LM pretraining on Accelerate: one CPU to many GPUs, resumable, with the same code path.

``train(run_config, output_dir, resume=False)`` is a plain function (the ``train`` and ``compare``
commands call it). It prepares the tokenizer and packed data, builds a seeded ``PosEncForCausalLM``,
and runs AdamW with linear warmup and cosine decay, gradient accumulation, clipping, mixed precision
(bf16 on GPU), periodic validation, a progress bar, ``metrics.jsonl`` rows and Accelerate trackers.
The output folder follows the model-directory contract (see docs/training.md).

Determinism: data order is a seeded permutation per epoch, cut into *global* batches that every
process slices by rank, so a run with N processes sees exactly the rows of a 1-process run with the
same global batch, and the data position after a resume is a pure function of the step.

Longer than our usual 400 lines because setup, loop, validation and export share one state and read best
in order; what stands on its own lives beside it: the optimizer step and model builder (``step.py``), the
checkpoint format (``checkpoints.py``), overwrite and lock handling (``output_guard.py``) and CPU FSDP
(``sharding.py``).
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import (
    apply_checkpoint,
    latest_complete_checkpoint,
    newest_readable_checkpoint,
    remove_staging_leftovers,
    save_checkpoint,
)
from ..errors import UsageError
from ..run_folder import METRICS_FILE, MetricsLog, check_writable_dir, write_run_config, write_train_summary
from .output_guard import (
    PreviousRun,
    check_resume_batch,
    check_resume_compatible,
    lock_output_dir,
    release_output_dir,
)
from .run_config import RunConfig
from .sharding import cpu_fsdp_requested, full_tensor, shard_on_cpu, unsharded_copy
from .step import build_causal_lm, build_optimizer, optimizer_step


class TrainingDiverged(RuntimeError):
    """The loss (or gradient norm) became NaN or infinite; the run stopped, earlier checkpoints are kept."""


class StopTraining(Exception):
    """Raise from a callback to end the run early (the model is still saved, marked ``stopped_early``)."""


# ---- data --------------------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    tokenizer: object
    train_blocks: object  # datasets.Dataset with "input_ids" rows of block_size tokens, torch format
    eval_blocks: object
    description: str
    source: dict  # run_folder.data_record of the data (stored in train_summary.json)


def prepare_data(run_config: RunConfig, show_progress: bool = True) -> PreparedData:
    """Tokenizer (trained once and cached, or loaded) and packed train/validation blocks."""
    if importlib.util.find_spec("datasets") is None:
        raise UsageError("training reads its data through the `datasets` package; install it: pip install datasets")
    from ..data.corpus import data_source_record, describe_data, load_text_dataset, tokenize_and_pack
    from ..data.tokenizer import load_or_train_tokenizer

    d, k = run_config.data, run_config.tokenizer
    description = describe_data(d.name, d.config)  # also fails early on a missing local path
    tokenizer = load_or_train_tokenizer(
        d.name,
        vocab_size=k.vocab_size,
        data_config=d.config,
        text_field=d.text_field,
        path=k.path,
        cache_dir=k.cache_dir,
        max_train_chars=k.max_train_chars,
        show_progress=show_progress,
    )
    blocks = {}
    for split in ("train", "validation"):
        texts = load_text_dataset(d.name, split, data_config=d.config, text_field=d.text_field)
        blocks[split] = tokenize_and_pack(texts, tokenizer, d.block_size).with_format("torch", columns=["input_ids"])
    return PreparedData(tokenizer, blocks["train"], blocks["validation"], description, data_source_record(d.name, d.config))


class GlobalBatchSampler(torch.utils.data.Sampler):
    """This process's slice of each global batch, forever, starting at micro-batch ``start``.

    Epoch e uses ``randperm(num_rows, seed + e)``; micro-batch k of an epoch is rows
    ``perm[k*G:(k+1)*G]`` with ``G = per_device * num_processes``, and process r takes the r-th slice.
    """

    def __init__(self, num_rows: int, per_device: int, num_processes: int, rank: int, seed: int, start: int = 0):
        self.per_device, self.rank, self.seed, self.start = per_device, rank, seed, start
        self.global_batch = per_device * num_processes
        self.num_rows = num_rows
        self.batches_per_epoch = num_rows // self.global_batch  # the tail of each epoch is dropped

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start
        while True:
            epoch, index = divmod(position, self.batches_per_epoch)
            order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + epoch))
            begin = index * self.global_batch + self.rank * self.per_device
            yield order[begin : begin + self.per_device].tolist()
            position += 1


def _collate(rows):
    """``Dataset.__getitems__`` gives a list of {"input_ids": tensor}; stack to (batch, block_size)."""
    return torch.stack([row["input_ids"] for row in rows])


def make_train_loader(blocks, config: RunConfig, accelerator, start_micro_batch: int) -> torch.utils.data.DataLoader:
    t = config.training
    sampler = GlobalBatchSampler(
        len(blocks), t.per_device_batch_size, accelerator.num_processes, accelerator.process_index, t.seed, start_micro_batch
    )
    return torch.utils.data.DataLoader(
        blocks,
        batch_sampler=sampler,
        collate_fn=_collate,
        num_workers=t.dataloader_num_workers,
        pin_memory=accelerator.device.type == "cuda",
    )


@torch.no_grad()
def evaluate_loss(model, blocks, accelerator, per_device: int, max_global_batches: int | None) -> float:
    """Mean next-token loss over the first validation rows (the same rows for any number of processes)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    rows = len(blocks) if max_global_batches is None else min(len(blocks), max_global_batches * per_device * world)
    rows -= rows % world  # every process runs the same number of forwards (collectives stay in step)
    mine = list(range(rank, rows, world))
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    was_training = model.training
    model.eval()
    for start in range(0, len(mine), per_device):
        input_ids = blocks[mine[start : start + per_device]]["input_ids"].to(accelerator.device)  # (b, block)
        loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
        predicted = input_ids.numel() - input_ids.shape[0]  # each row predicts block_size - 1 tokens
        total += loss.double() * predicted
        count += predicted
    model.train(was_training)
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    return (total / count).item()


# ---- model and optimizer -----------------------------------------------------------------------------------
def build_model(run_config: RunConfig, tokenizer):
    """A freshly initialized ``PosEncForCausalLM`` (seed it first) sized to the tokenizer."""
    vocab = len(tokenizer)
    if run_config.model.vocab_size is not None and run_config.model.vocab_size < vocab:
        raise UsageError(f"model.vocab_size={run_config.model.vocab_size} is smaller than the tokenizer's {vocab} tokens")
    config = run_config.model_config(
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return build_causal_lm(config, run_config.model.attn_implementation)


# ---- small helpers -----------------------------------------------------------------------------------------
def resolve_mixed_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def resolve_trackers(report_to: str) -> list[str]:
    if report_to == "none":
        return []
    if report_to == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") is not None else []
    return [name.strip() for name in report_to.split(",") if name.strip()]


def default_output_dir(run_config: RunConfig) -> Path:
    return Path("runs") / f"{run_config.run_name or 'run'}-{run_config.model.position_encoding}"


def _flat_hparams(config: dict, prefix: str = "") -> dict:
    """TensorBoard hparams take scalars only: flatten sections, stringify the rest."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key in ("model", "data", "tokenizer", "training"):
            flat.update(_flat_hparams(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _reset_accelerate_singletons() -> None:
    """Let the next ``train()`` in this process build a fresh Accelerator (compare runs several)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


# ---- the loop ----------------------------------------------------------------------------------------------
def train(
    run_config: RunConfig,
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    *,
    overwrite: bool = False,
    show_progress: bool = True,
    callbacks: Sequence[Callable[[dict], None]] = (),
) -> dict:
    """Train a causal LM as ``run_config`` says and write a ``from_pretrained``-ready folder.

    Args:
        run_config: a validated ``RunConfig`` (``load_run_config``).
        output_dir: the model folder; default ``run_config.output_dir`` or ``runs/<run_name>-<encoding>``.
        resume: continue from the latest complete checkpoint in ``output_dir`` (from step 0 if there is none).
        overwrite: replace a previous run in ``output_dir`` instead of refusing.
        show_progress: tqdm progress bars (main process only).
        callbacks: functions called with every metrics row (training rows and ``eval_loss`` rows), on every
            process; raising ``StopTraining`` ends the run early.

    Returns the ``train_summary.json`` content. Raises ``UsageError`` for bad input (before training) and
    ``TrainingDiverged`` when the loss becomes NaN/inf (the last good checkpoint is kept).
    """
    from accelerate import Accelerator

    run_config = copy.deepcopy(run_config)
    run_config.validate()
    output_dir = Path(output_dir or run_config.output_dir or default_output_dir(run_config))
    check_writable_dir(output_dir, "output directory")
    created = not output_dir.exists()
    previous = PreviousRun(output_dir, resume, overwrite)  # moved aside only once the input is known to be good
    t = run_config.training
    trackers = resolve_trackers(t.report_to)
    has_accelerator = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    try:
        accelerator = Accelerator(
            cpu=not has_accelerator,  # makes torchrun on CPU use gloo (MULTI_CPU) instead of N lone processes
            mixed_precision=resolve_mixed_precision(t.mixed_precision),
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            log_with=trackers or None,
            project_dir=str(output_dir / "logs"),
            dynamo_backend="inductor" if t.torch_compile else "no",
        )
    except (ValueError, ImportError) as error:  # e.g. fp16 without a GPU, an unknown or missing tracker
        _reset_accelerate_singletons()
        raise UsageError(f"cannot set up Accelerate with training.mixed_precision={t.mixed_precision!r}, "
                         f"training.report_to={t.report_to!r}: {error}") from error
    if run_config.model.attn_implementation == "flex_attention" and accelerator.device.type == "cpu":
        _reset_accelerate_singletons()
        raise UsageError(
            "model.attn_implementation='flex_attention' cannot train on CPU: PyTorch's FlexAttention has no backward "
            "pass there; use 'sdpa' or 'eager' (flex_attention still works for evaluation on CPU and training on GPU)"
        )
    threads_before = torch.get_num_threads()
    if t.cpu_threads is not None and accelerator.device.type == "cpu":
        torch.set_num_threads(t.cpu_threads)
    lock = None
    try:
        lock = lock_output_dir(accelerator, output_dir)
        return _train_with(accelerator, run_config, output_dir, resume, previous, show_progress, callbacks, trackers)
    finally:
        torch.set_num_threads(threads_before)
        if trackers:
            accelerator.end_training()
        _reset_accelerate_singletons()
        release_output_dir(lock, created)


def _read_resume_checkpoint(accelerator, output_dir: Path, run_config: RunConfig, global_batch: int):
    """The newest readable checkpoint, checked against the config before any file is written (None: step 0)."""
    main = accelerator.is_main_process
    contents = newest_readable_checkpoint(output_dir, accelerator.process_index, lambda text: _say(main, text))
    if contents is None:
        return None
    check_resume_compatible(output_dir, run_config.to_dict())
    check_resume_batch(contents.trainer_state, global_batch, run_config.training.gradient_accumulation_steps,
                       contents.path)
    return contents


def _train_with(accelerator, run_config, output_dir, resume, previous, show_progress, callbacks, trackers) -> dict:
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    t = run_config.training
    main = accelerator.is_main_process
    show = show_progress and main
    with accelerator.main_process_first():  # the main process fills the caches, the others read them
        data = prepare_data(run_config, show_progress=show)
    global_batch = _check_data_fits(data, run_config, accelerator.num_processes)
    run_config.model.vocab_size = run_config.model.vocab_size or len(data.tokenizer)
    run_config.output_dir = str(output_dir)
    checkpoint = _read_resume_checkpoint(accelerator, output_dir, run_config, global_batch) if resume else None

    set_seed(t.seed)  # identical initial weights on every process and in every run with this seed
    model = build_model(run_config, data.tokenizer)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    sharded_on_cpu = cpu_fsdp_requested(accelerator)
    if sharded_on_cpu:  # Accelerate would fall back to DDP on CPU: shard with FSDP2 ourselves
        model = shard_on_cpu(model)
        _say(main, f"Sharding the model with torch FSDP2 across {accelerator.num_processes} CPU processes")
    # on the sharded parameters when sharded
    optimizer = build_optimizer(model, t.lr, t.weight_decay, (t.adam_beta1, t.adam_beta2), t.adam_epsilon)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.max_steps)
    if sharded_on_cpu:
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)

    state = {"step": 0, "tokens_seen": 0, "train_runtime_s": 0.0, "global_batch_size": global_batch * t.gradient_accumulation_steps}
    if checkpoint is not None:
        state.update(apply_checkpoint(accelerator, checkpoint, model=model, optimizer=optimizer, scheduler=scheduler,
                                      say=lambda text: print(text, file=sys.stderr, flush=True)))
        _say(main, f"Resuming from {checkpoint.path} (step {state['step']})")
    elif resume:
        _say(main, f"No complete checkpoint in {output_dir}/checkpoints: starting from step 0")

    # Every check has passed and the model is built: only now is anything in the output folder changed.
    metrics = MetricsLog(output_dir / METRICS_FILE, enabled=main)
    if main:
        _open_output_dir(output_dir, previous, run_config, metrics, state["step"] if checkpoint is not None else None)
    accelerator.wait_for_everyone()
    if trackers:
        accelerator.init_trackers(run_config.run_name or "hf_posenc", config=_flat_hparams(run_config.to_dict()))

    loader = make_train_loader(data.train_blocks, run_config, accelerator, state["step"] * t.gradient_accumulation_steps)
    try:
        summary = _run_loop(
            accelerator, model, optimizer, scheduler, iter(loader), data, run_config, output_dir, state, metrics,
            callbacks, show, loader.batch_sampler.batches_per_epoch, on_checkpoint=previous.discard if main else None,
        )
        _export(accelerator, model, data, run_config, output_dir, summary)
    except BaseException:
        if main and previous.aside is not None:  # failed before its first checkpoint: the earlier run comes back
            previous.restore()
            _say(main, f"The new run failed before its first checkpoint; the earlier run in {output_dir} is restored")
        raise
    if main:
        previous.discard()
    return summary


def randomized_positions(max_position: int, batch: int, length: int, seed: int) -> torch.LongTensor:
    """Randomized positions (Ruoss et al., 2023): per row, a sorted random subset of ``[0, max_position)``.

    ``(batch, length)``; a function of ``seed`` alone, so a resumed run draws the same positions.
    """
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, max_position, generator=generator)  # (batch, max_position)
    return scores.topk(length, dim=-1).indices.sort(dim=-1).values  # (batch, length): random subset, sorted


def _training_batch(input_ids, t, step: int, micro: int, rank: int) -> dict:
    """The model inputs of one micro-batch, with randomized positions when the run asks for them."""
    batch = {"input_ids": input_ids, "labels": input_ids}
    if t.random_positions_max is None:
        return batch
    seed = ((t.seed * 1_000_003 + step) * 1009 + micro) * 101 + rank
    batch["position_ids"] = randomized_positions(t.random_positions_max, *input_ids.shape, seed).to(input_ids.device)
    # An all-ones mask: without it transformers reads non-contiguous position_ids as packed sequences.
    batch["attention_mask"] = torch.ones_like(input_ids)
    return batch


def _check_data_fits(data: PreparedData, run_config: RunConfig, num_processes: int) -> int:
    """The global batch (rows per micro-step), once the data is known to fill one and every process validates."""
    global_batch = run_config.training.per_device_batch_size * num_processes
    block = run_config.data.block_size
    if len(data.train_blocks) < global_batch:
        raise UsageError(
            f"data {data.description}: the train split packs into {len(data.train_blocks)} blocks of {block} tokens, "
            f"fewer than one global batch ({global_batch}); use more data or a smaller batch / block_size"
        )
    if len(data.eval_blocks) < num_processes:
        raise UsageError(
            f"data {data.description}: the validation split packs into {len(data.eval_blocks)} blocks of {block} "
            f"tokens, fewer than the {num_processes} process(es); use more data or a smaller block_size"
        )
    return global_batch


def _open_output_dir(output_dir: Path, previous: PreviousRun, run_config: RunConfig, metrics: MetricsLog,
                     resumed_step: int | None) -> None:
    """Main process, after every check: set the earlier run aside, write the run config, trim the metrics."""
    previous.move_aside()
    output_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(output_dir, run_config.to_dict())
    if resumed_step is None:
        metrics.path.unlink(missing_ok=True)
    elif metrics.truncate_after(resumed_step):  # rows after the checkpoint are written again
        _say(True, f"Dropped unreadable line(s) of {metrics.path} (a write cut short by a killed run)")
    remove_staging_leftovers(output_dir)


def _say(main: bool, message: str) -> None:
    if main:
        print(message, file=sys.stderr, flush=True)


def _run_loop(accelerator, model, optimizer, scheduler, batches, data, run_config, output_dir, state, metrics,
              callbacks, show, batches_per_epoch, on_checkpoint=None) -> dict:
    """Train from ``state["step"]`` to ``max_steps``; returns the training summary (see ``_TrainLoop``)."""
    loop = _TrainLoop(accelerator, model, optimizer, scheduler, data, run_config, output_dir, state, metrics,
                      callbacks, batches_per_epoch, on_checkpoint)
    return loop.run(batches, show)


class _TrainLoop:
    """The state of one training session: interval statistics, the first non-finite step, the last losses.

    The non-finite check stays on the device (``first_bad_step``) and is read only when logging or saving, so
    a step never waits for the host.
    """

    def __init__(self, accelerator, model, optimizer, scheduler, data, run_config, output_dir, state, metrics,
                 callbacks, batches_per_epoch, on_checkpoint):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.data, self.run_config, self.output_dir, self.state = data, run_config, output_dir, state
        self.metrics, self.callbacks, self.on_checkpoint = metrics, callbacks, on_checkpoint
        self.batches_per_epoch = batches_per_epoch
        t = self.t = run_config.training
        device = accelerator.device
        self.tokens_per_step = (t.per_device_batch_size * accelerator.num_processes * t.gradient_accumulation_steps
                                * run_config.data.block_size)
        self.max_norm = t.max_grad_norm if t.max_grad_norm > 0 else math.inf  # inf: measure the norm, never clip
        self.interval_loss = torch.zeros((), device=device)
        self.interval_steps = 0
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.last_good_checkpoint = latest_complete_checkpoint(output_dir)
        self.last_loss, self.last_eval_loss = state.get("final_loss"), state.get("final_eval_loss")
        self.runtime_before = state["train_runtime_s"]
        self.grad_norm = torch.zeros((), device=device)

    def run(self, batches, show: bool) -> dict:
        from tqdm.auto import tqdm

        t, state = self.t, self.state
        progress = tqdm(total=t.max_steps, initial=state["step"], disable=not show,
                        desc=f"train {self.run_config.model.position_encoding}", unit="step")
        self.interval_start = self.session_start = time.perf_counter()
        stopped_early = False
        self.model.train()
        try:
            while state["step"] < t.max_steps:
                self._step(batches)
                progress.update(1)
                step = state["step"]
                if step % t.logging_steps == 0 or step == t.max_steps:
                    loss_value, tokens_per_s = self._log(step)
                    progress.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_s:.0f}")
                if (t.eval_steps and step % t.eval_steps == 0) or step == t.max_steps:
                    self.last_eval_loss = evaluate_loss(self.model, self.data.eval_blocks, self.accelerator,
                                                        t.per_device_batch_size, t.eval_max_batches)
                    self._emit({"step": step, "eval_loss": self.last_eval_loss})
                    self.interval_start = time.perf_counter()
                if t.save_steps and (step % t.save_steps == 0 or step == t.max_steps):
                    self._checkpoint(step)
        except StopTraining:
            stopped_early = True
        finally:
            progress.close()
        self._check_finite()
        state["train_runtime_s"] = self._runtime()
        return self._summary(stopped_early)

    def _step(self, batches) -> None:
        t, state, accelerator = self.t, self.state, self.accelerator
        micro_batches = []
        for micro in range(t.gradient_accumulation_steps):
            input_ids = next(batches).to(accelerator.device, non_blocking=True)  # (per_device, block_size)
            micro_batches.append(_training_batch(input_ids, t, state["step"], micro, accelerator.process_index))
        step_loss, grad_norm = optimizer_step(self.model, micro_batches, self.optimizer, self.scheduler,
                                              max_grad_norm=self.max_norm, accelerator=accelerator)
        self.grad_norm = full_tensor(grad_norm)  # a DTensor when the parameters are sharded
        state["step"] += 1
        state["tokens_seen"] += self.tokens_per_step
        finite = torch.isfinite(step_loss) & torch.isfinite(self.grad_norm)
        first_bad = self.first_bad_step
        self.first_bad_step = torch.where((first_bad < 0) & ~finite, torch.full_like(first_bad, state["step"]), first_bad)
        self.interval_loss += step_loss
        self.interval_steps += 1

    def _log(self, step: int) -> tuple[float, float]:
        """Write the logging row of the interval that ends at ``step``; returns (mean loss, tokens/s)."""
        self._check_finite()
        loss_value = (self.accelerator.reduce(self.interval_loss, "mean") / self.interval_steps).item()
        elapsed = time.perf_counter() - self.interval_start
        row = {
            "step": step,
            "loss": loss_value,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(self.grad_norm),
            "tokens_per_s": self.interval_steps * self.tokens_per_step / max(elapsed, 1e-9),
            "tokens_seen": self.state["tokens_seen"],
            "epoch": step * self.t.gradient_accumulation_steps / self.batches_per_epoch,
            "elapsed_s": self._runtime(),
        }
        self.last_loss = loss_value
        self.interval_loss.zero_()
        self.interval_steps = 0
        self._emit(row)
        self.interval_start = time.perf_counter()
        return loss_value, row["tokens_per_s"]

    def _checkpoint(self, step: int) -> None:
        self._check_finite()  # never write a checkpoint after a NaN/inf
        self.state["train_runtime_s"] = self._runtime()
        self.state.update(final_loss=self.last_loss, final_eval_loss=self.last_eval_loss)
        self.last_good_checkpoint = save_checkpoint(
            self.accelerator, self.output_dir, step, dict(self.state), self.t.save_total_limit,
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
        )
        if self.on_checkpoint is not None:
            self.on_checkpoint()
        self.interval_start = time.perf_counter()

    def _runtime(self) -> float:
        return self.runtime_before + time.perf_counter() - self.session_start

    def _emit(self, row: dict) -> None:
        self.metrics.write(row)
        self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        for callback in self.callbacks:
            callback(row)

    def _check_finite(self) -> None:
        bad = int(self.accelerator.gather(self.first_bad_step[None]).max().item())  # any process, any step
        if bad >= 0:
            checkpoint = self.last_good_checkpoint
            kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
            raise TrainingDiverged(
                f"the training loss or gradient norm became NaN/inf at step {bad} "
                f"(position_encoding={self.run_config.model.position_encoding!r}, lr={self.t.lr}); stopped; {kept}. "
                "Try a lower training.lr, more warmup or training.max_grad_norm > 0, then resume or start a new run."
            )

    def _summary(self, stopped_early: bool) -> dict:
        run_config, state, accelerator = self.run_config, self.state, self.accelerator
        return {
            "position_encoding": run_config.model.position_encoding,
            "block_size": run_config.data.block_size,
            "max_steps": self.t.max_steps,
            "steps_completed": state["step"],
            "stopped_early": stopped_early,
            "tokens_seen": state["tokens_seen"],
            "final_loss": self.last_loss,
            "final_eval_loss": self.last_eval_loss,
            "train_runtime_s": state["train_runtime_s"],
            "data": self.data.source,
            "num_parameters": sum(p.numel() for p in accelerator.unwrap_model(self.model).parameters()),
            "num_processes": accelerator.num_processes,
            "global_batch_size": state["global_batch_size"],
            "mixed_precision": accelerator.mixed_precision,
            "vocab_size": run_config.model.vocab_size,
        }


def _export(accelerator, model, data, run_config, output_dir: Path, summary: dict) -> None:
    """Write the from_pretrained-ready folder: model + remote code, tokenizer, run config, summary."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    accelerator.wait_for_everyone()
    # Full tensors on the main process whatever the wrapping (none, DDP, FSDP); collective under FSDP.
    state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if accelerator.is_main_process:
        unwrapped = unsharded_copy(accelerator.unwrap_model(model), state_dict)
        # The trained context length, in config.json for evaluators (lm-evaluation-harness) and our own tools.
        unwrapped.config.original_max_position_embeddings = run_config.data.block_size
        unwrapped.save_pretrained(str(output_dir), state_dict=state_dict, safe_serialization=True)
        data.tokenizer.save_pretrained(str(output_dir))
        write_run_config(output_dir, run_config.to_dict())
        write_train_summary(output_dir, summary)
    accelerator.wait_for_everyone()


__all__ = ["train", "prepare_data", "build_model", "evaluate_loss", "TrainingDiverged", "StopTraining", "GlobalBatchSampler"]
