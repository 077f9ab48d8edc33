"""What protects a training output folder: one writer at a time, nothing lost by --overwrite or --resume.

- ``lock_output_dir``: the main process takes the folder's ``RunLock`` (pid and host recorded; a killed
  holder's lock is taken over); every process learns whether that worked, so none waits forever.
- ``PreviousRun``: with ``--overwrite`` the earlier run's files are *moved aside* into
  ``.previous-run-<pid>/`` only once the new run has passed every input check and built its model, put
  back if the new run fails before its first checkpoint, and deleted only after that checkpoint (or the
  export, when no checkpoints are saved).
- ``check_resume_compatible``: a resume with another model, data order or global batch is refused
  before any file is touched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from ..errors import UsageError
from ..run_folder import PREVIOUS_RUN_PREFIX, RUN_ARTIFACTS, LOCK_FILE, RunLock, read_run_config

# Sections / fields that must not change when a run is resumed (they fix the model and the data order).
RESUME_FIXED_SECTIONS = ("model", "data", "tokenizer")
RESUME_FIXED_TRAINING = ("seed", "gradient_accumulation_steps")


def lock_output_dir(accelerator, output_dir: Path) -> RunLock | None:
    """Take the folder's lock on the main process; raise UsageError on every process if it is held."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock(output_dir).acquire()
        except UsageError as refused:
            error = refused
    failed = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), "sum")
    if error is not None:
        raise error
    if failed.item() > 0:
        raise UsageError(f"output directory {str(output_dir)!r} is in use by another run")
    return lock


def release_output_dir(lock: RunLock | None, created: bool) -> None:
    """Drop the lock; a folder this run created and left holding nothing but the lock file goes too."""
    if lock is None:
        return
    lock.release()
    folder = lock.path.parent
    if created and folder.is_dir() and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
        lock.path.unlink(missing_ok=True)
        folder.rmdir()


class PreviousRun:
    """An earlier run in the output folder that ``--overwrite`` replaces without losing it too early."""

    def __init__(self, output_dir: Path, resume: bool, overwrite: bool):
        self.output_dir, self.aside = output_dir, None
        existing = [output_dir / name for name in RUN_ARTIFACTS if (output_dir / name).exists()]
        if existing and not resume and not overwrite:
            raise UsageError(
                f"output directory {str(output_dir)!r} already holds a run ({', '.join(p.name for p in existing)}); "
                "continue it with `resume`, replace it with `overwrite`, or choose another `output_dir`", field="output_dir"
            )
        leftovers = sorted(output_dir.glob(f"{PREVIOUS_RUN_PREFIX}*")) if output_dir.is_dir() else []
        self.paths = [] if resume else existing + (leftovers if overwrite else [])

    def move_aside(self) -> None:
        """Main process: move the earlier run's files into ``.previous-run-<pid>/`` (renames, nothing deleted)."""
        if not self.paths:
            return
        self.aside = self.output_dir / f"{PREVIOUS_RUN_PREFIX}{os.getpid()}"
        self.aside.mkdir()
        for path in self.paths:
            os.rename(path, self.aside / path.name)

    def restore(self) -> None:
        """The new run failed before its first checkpoint: put the earlier run back as it was."""
        if self.aside is None:
            return
        for moved in self.aside.iterdir():
            target = self.output_dir / moved.name
            if target.exists():  # written by the failed new run
                shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
            os.rename(moved, target)
        self.aside.rmdir()
        self.aside = None

    def discard(self) -> None:
        """The new run has a checkpoint (or its export) on disk: the earlier run can go."""
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None


def check_resume_compatible(output_dir: Path, current: dict) -> None:
    """Refuse a resume whose model, data, tokenizer, seed or accumulation differ from the saved run's."""
    saved = read_run_config(output_dir)
    if saved is None:
        return
    for section in RESUME_FIXED_SECTIONS:
        if saved.get(section) != current[section]:
            changed = sorted(k for k in current[section] if (saved.get(section) or {}).get(k) != current[section][k])
            raise UsageError(
                f"cannot resume: {', '.join(f'{section}.{k}' for k in changed)} differ(s) from the run in "
                f"{str(output_dir)!r}; resume with the same config, or start a new `output_dir`", field="output_dir"
            )
    for key in RESUME_FIXED_TRAINING:
        if (saved.get("training") or {}).get(key) != current["training"][key]:
            raise UsageError(f"cannot resume: training.{key} differs from the run in {str(output_dir)!r}")


def check_resume_batch(checkpoint_state: dict, global_batch: int, accumulation: int, path: Path) -> None:
    """The data position is counted in global batches: a resume must keep the same global batch."""
    saved = checkpoint_state.get("global_batch_size")
    if saved != global_batch * accumulation:
        raise UsageError(
            f"cannot resume: the global batch ({global_batch} x {accumulation} accumulation) differs "
            f"from the {saved} rows per step of checkpoint {str(path)!r}"
        )
