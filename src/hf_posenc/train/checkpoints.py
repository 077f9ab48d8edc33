"""Resumable checkpoints that are never half-written and never unpickled.

A checkpoint is ``OUTPUT_DIR/checkpoints/checkpoint-<step>/``:

    model.safetensors           the full (gathered) model state
    optimizer.safetensors       every optimizer tensor, keyed ``state/<parameter name>/<slot>``; the param
                                groups (learning rates, betas...) as JSON in the file's metadata
    scheduler.json              the LR scheduler's ``state_dict`` (plain numbers)
    grad_scaler.json            fp16 only: the gradient scaler's ``state_dict``
    rng_state_<rank>.safetensors  each process's torch CPU / accelerator generator states as tensors; Python's
                                and NumPy's generator states as JSON metadata
    trainer_state.json          step, tokens seen, data position...
    checkpoint_complete.json    the completion marker, written last

Nothing here calls ``pickle`` or ``torch.load``: a crafted checkpoint can hold wrong numbers, never code.
Folders written by older releases (Accelerate's ``optimizer.bin`` / ``random_states_0.pkl`` /
``custom_checkpoint_0.pkl`` pickles) are refused with a message saying why.

Why it is safe to kill a run at any moment: everything is written into a hidden staging folder
(``.staging-checkpoint-<step>``), the marker goes in last, and only then is the folder renamed to
``checkpoint-<step>`` (a rename within one filesystem is atomic). Resume considers only folders with the
right name *and* the marker; staging leftovers are deleted on the next save. A complete checkpoint that
cannot be read (a disk error, a truncated file) is skipped for the previous one, with a message. Multi-node
runs need a shared filesystem for OUTPUT_DIR.

Model and optimizer states go through ``torch.distributed.checkpoint.state_dict`` with full state dicts, so
one format serves a single process, DDP and FSDP: under FSDP every process takes part in the gather and
the main process writes; on resume every process reads the full file and keeps its shard.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UsageError

CHECKPOINTS_SUBDIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
STAGING_PREFIX = ".staging-"
COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "grad_scaler.json"
RNG_FILE = "rng_state_{rank}.safetensors"
# What Accelerate's save_state wrote in checkpoints of earlier releases: pickles we refuse to load.
LEGACY_PICKLE_PATTERNS = ("*.pkl", "*.bin", "*.pt", "*.pth")
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


class CheckpointUnreadable(Exception):
    """A complete checkpoint whose files cannot be read (resume falls back to the previous one)."""


def checkpoints_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_SUBDIR


def is_complete(path: Path) -> bool:
    return bool(_CHECKPOINT_NAME.match(path.name)) and (path / COMPLETE_MARKER).is_file()


def complete_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT_NAME.match(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def _fsync_path(path: Path) -> None:
    """Flush a file or folder entry to disk (best effort: not every filesystem supports it on folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def remove_staging_leftovers(output_dir: str | os.PathLike) -> None:
    root = checkpoints_dir(output_dir)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(STAGING_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


# ---- state <-> safetensors / JSON ------------------------------------------------------------------------
def _full_states(model, optimizer) -> tuple[dict, dict]:
    """Full model and optimizer state dicts keyed by parameter name (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _unshared(tensors: dict) -> dict:
    """safetensors refuses tensors that share memory (tied weights): give each key its own contiguous copy."""
    seen, out = set(), {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[name] = tensor.clone().contiguous() if key in seen or not tensor.is_contiguous() else tensor
        seen.add(key)
    return out


def _optimizer_to_safetensors(optimizer_state: dict) -> tuple[dict, dict]:
    tensors = {}
    for param, slots in optimizer_state["state"].items():
        for slot, value in slots.items():
            tensors[f"state/{param}/{slot}"] = torch.as_tensor(value)
    return _unshared(tensors), {"param_groups": json.dumps(optimizer_state["param_groups"])}


def _optimizer_from_safetensors(tensors: dict, metadata: dict) -> dict:
    state: dict = {}
    for key, tensor in tensors.items():
        _, rest = key.split("/", 1)
        param, slot = rest.rsplit("/", 1)
        state.setdefault(param, {})[slot] = tensor
    groups = json.loads(metadata["param_groups"])
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def _rng_states() -> tuple[dict, dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{index}"] = state
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    metadata = {
        "python": json.dumps([version, list(internal), gauss]),
        "numpy": json.dumps([kind, int(position), int(has_gauss), float(cached)]),
    }
    return tensors, metadata


def _set_rng_states(tensors: dict, metadata: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[f"cuda_{i}"] for i in range(torch.cuda.device_count()) if f"cuda_{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = json.loads(metadata["python"])
    random.setstate((version, tuple(internal), gauss))
    kind, position, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), position, has_gauss, cached))


# ---- save --------------------------------------------------------------------------------------------------
def save_checkpoint(accelerator, output_dir, step: int, trainer_state: dict, keep: int, *, model, optimizer,
                    scheduler) -> Path:
    """Save a complete checkpoint for ``step`` atomically and keep only the newest ``keep`` ones.

    Must be called by every process (the state gather under FSDP is collective).
    """
    from safetensors.torch import save_file

    root = checkpoints_dir(output_dir)
    staging = root / f"{STAGING_PREFIX}{CHECKPOINT_PREFIX}{step}"
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    accelerator.wait_for_everyone()
    model_state, optimizer_state = _full_states(model, optimizer)
    rng_tensors, rng_metadata = _rng_states()
    save_file(rng_tensors, staging / RNG_FILE.format(rank=accelerator.process_index), metadata=rng_metadata)
    if accelerator.is_main_process:
        save_file(_unshared(model_state), staging / MODEL_FILE, metadata={"format": "pt"})
        optimizer_tensors, optimizer_metadata = _optimizer_to_safetensors(optimizer_state)
        save_file(optimizer_tensors, staging / OPTIMIZER_FILE, metadata=optimizer_metadata)
        _write_json(staging / SCHEDULER_FILE, scheduler.state_dict())
        if accelerator.scaler is not None:
            _write_json(staging / SCALER_FILE, accelerator.scaler.state_dict())
        _write_json(staging / TRAINER_STATE_FILE, trainer_state | {"num_processes": accelerator.num_processes})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for path in staging.iterdir():  # everything on disk before the marker says it is
            if path.is_file():
                _fsync_path(path)
        _write_json(staging / COMPLETE_MARKER, {"step": step})
        if final.exists():  # a stale copy of this step (e.g. from a run resumed further back)
            shutil.rmtree(final)
        os.rename(staging, final)
        _fsync_path(root)
        for _, old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        remove_staging_leftovers(output_dir)
    accelerator.wait_for_everyone()
    return final


# ---- load --------------------------------------------------------------------------------------------------
@dataclass
class CheckpointContents:
    """Everything read from one checkpoint folder, before any of it is applied."""

    path: Path
    trainer_state: dict
    model_state: dict
    optimizer_state: dict
    scheduler_state: dict
    scaler_state: dict | None
    rng: tuple[dict, dict] | None


def refuse_pickle_checkpoint(path: Path) -> None:
    """An older release's checkpoint (pickled optimizer / scheduler / RNG states) is refused, never loaded."""
    pickles = sorted(p.name for pattern in LEGACY_PICKLE_PATTERNS for p in path.glob(pattern))
    if pickles:
        raise UsageError(
            f"cannot resume from {str(path)!r}: it holds pickle files ({', '.join(pickles)}) written by an older "
            "hf_posenc release; loading a pickle can run arbitrary code, so hf_posenc never does. Start a new run "
            "(`overwrite`, or another `output_dir`); the exported model.safetensors of that run stays usable",
            field="output_dir",
        )


def read_checkpoint(path: Path, rank: int) -> CheckpointContents:
    """Read (not apply) a checkpoint; raise ``CheckpointUnreadable`` naming the file that is wrong."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    refuse_pickle_checkpoint(path)
    current = path / TRAINER_STATE_FILE
    try:
        trainer_state = json.loads(current.read_text(encoding="utf-8"))
        current = path / MODEL_FILE
        model_state = load_file(current)
        current = path / OPTIMIZER_FILE
        with safe_open(current, framework="pt") as handle:
            optimizer_state = _optimizer_from_safetensors({k: handle.get_tensor(k) for k in handle.keys()},
                                                          handle.metadata() or {})
        current = path / SCHEDULER_FILE
        scheduler_state = json.loads(current.read_text(encoding="utf-8"))
        current = path / SCALER_FILE
        scaler_state = json.loads(current.read_text(encoding="utf-8")) if current.exists() else None
        current = path / RNG_FILE.format(rank=rank)
        rng = None
        if current.exists():  # absent when resuming with more processes than the run had
            with safe_open(current, framework="pt") as handle:
                rng = ({k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {})
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        raise CheckpointUnreadable(f"{current}: {type(error).__name__}: {error}") from error
    if not isinstance(trainer_state, dict) or not isinstance(trainer_state.get("step"), int):
        raise CheckpointUnreadable(f"{path / TRAINER_STATE_FILE}: no integer 'step'")
    return CheckpointContents(path, trainer_state, model_state, optimizer_state, scheduler_state, scaler_state, rng)


def newest_readable_checkpoint(output_dir, rank: int, say) -> CheckpointContents | None:
    """The newest complete checkpoint that reads back whole; unreadable newer ones are reported and skipped."""
    for _, path in reversed(complete_checkpoints(output_dir)):
        try:
            return read_checkpoint(path, rank)
        except CheckpointUnreadable as error:
            say(f"Skipping checkpoint {path}: it cannot be read ({error}); trying the previous one")
    return None


def apply_checkpoint(accelerator, contents: CheckpointContents, *, model, optimizer, scheduler, say=print) -> dict:
    """Put model, optimizer, scheduler, scaler and RNG states in place; return the trainer state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(
        model, optimizer, model_state_dict=contents.model_state, optim_state_dict=contents.optimizer_state,
        options=StateDictOptions(full_state_dict=True, strict=True),
    )
    scheduler.load_state_dict(contents.scheduler_state)
    if accelerator.scaler is not None and contents.scaler_state is not None:
        accelerator.scaler.load_state_dict(contents.scaler_state)
    if contents.rng is not None:
        _set_rng_states(*contents.rng)
    else:  # the data order does not depend on it, but random ops (dropout) will differ from the original run
        say(f"Checkpoint {contents.path} has no RNG state for process {accelerator.process_index} (it was written by "
            f"{contents.trainer_state.get('num_processes', '?')} process(es)); continuing with fresh generator states")
    return dict(contents.trainer_state)


__all__ = [
    "save_checkpoint",
    "read_checkpoint",
    "apply_checkpoint",
    "newest_readable_checkpoint",
    "refuse_pickle_checkpoint",
    "latest_complete_checkpoint",
    "complete_checkpoints",
    "checkpoints_dir",
    "remove_staging_leftovers",
    "CheckpointContents",
    "CheckpointUnreadable",
    "COMPLETE_MARKER",
]
