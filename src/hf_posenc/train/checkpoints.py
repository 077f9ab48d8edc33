"""Resumable checkpoints that are never half-written.

A checkpoint is ``OUTPUT_DIR/checkpoints/checkpoint-<step>/``: Accelerate's ``save_state`` files (model,
optimizer, registered objects such as the LR scheduler, every process's RNG states) plus
``trainer_state.json`` (step, tokens seen, data position...) and a completion marker written last.

Why it is safe to kill a run at any moment: everything is written into a hidden staging folder
(``.staging-checkpoint-<step>``), the marker goes in last, and only then is the folder renamed to
``checkpoint-<step>`` (a rename within one filesystem is atomic). Resume considers only folders with the
right name *and* the marker; staging leftovers are deleted on the next save. Multi-node runs need a
shared filesystem for OUTPUT_DIR (all processes write into the same staging folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

CHECKPOINTS_SUBDIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
STAGING_PREFIX = ".staging-"
COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE_FILE = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


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
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def remove_staging_leftovers(output_dir: str | os.PathLike) -> None:
    root = checkpoints_dir(output_dir)
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(STAGING_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(accelerator, output_dir, step: int, trainer_state: dict, keep: int) -> Path:
    """Save a complete checkpoint for ``step`` atomically and keep only the newest ``keep`` ones.

    Must be called by every process (Accelerate's ``save_state`` is collective).
    """
    root = checkpoints_dir(output_dir)
    staging = root / f"{STAGING_PREFIX}{CHECKPOINT_PREFIX}{step}"
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(staging / TRAINER_STATE_FILE, trainer_state)
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


def load_checkpoint(accelerator, path: str | os.PathLike) -> dict:
    """Restore model, optimizer, scheduler and RNG states from ``path``; return its trainer state."""
    path = Path(path)
    accelerator.load_state(str(path))
    return json.loads((path / TRAINER_STATE_FILE).read_text())


__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_complete_checkpoint",
    "complete_checkpoints",
    "checkpoints_dir",
    "remove_staging_leftovers",
    "COMPLETE_MARKER",
]
