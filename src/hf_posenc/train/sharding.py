"""Fully sharded training on CPU processes, where Accelerate offers only DDP.

Accelerate turns ``ACCELERATE_USE_FSDP=true`` (what ``accelerate launch --config_file
configs/accelerate/fsdp.yaml`` sets) into FSDP on GPUs only; on CPU processes (gloo) it silently falls
back to DDP. There the engine shards the model itself with torch's FSDP2 (``fully_shard``: one unit per
decoder layer, then the root), so a CPU run exercises the same sharded code paths as a GPU run:
sharded parameters, gradients and optimizer state, full-state checkpoints gathered through
``torch.distributed.checkpoint.state_dict`` and a gathered export.
"""

from __future__ import annotations

import os


def cpu_fsdp_requested(accelerator) -> bool:
    from accelerate.utils import DistributedType

    wanted = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")
    return wanted and accelerator.distributed_type == DistributedType.MULTI_CPU


def shard_on_cpu(model):
    """Shard ``model`` in place across the gloo process group: each decoder layer, then the whole model."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def full_tensor(value):
    """A DTensor (e.g. the gradient norm of sharded parameters) as a plain tensor; anything else unchanged."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def unsharded_copy(model, full_state_dict: dict):
    """A plain model holding ``full_state_dict`` when ``model`` was sharded by ``shard_on_cpu``, else ``model``.

    ``fully_shard`` swaps the model's class for a generated FSDP subclass, so ``save_pretrained`` on it would
    copy torch's FSDP sources as "remote code" instead of ours; the export saves a plain twin instead.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return model
    plain_class = next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))
    plain = plain_class(model.config)
    plain.load_state_dict(full_state_dict, strict=True)
    plain.generation_config = model.generation_config
    return plain


__all__ = ["cpu_fsdp_requested", "shard_on_cpu", "full_tensor", "unsharded_copy"]
