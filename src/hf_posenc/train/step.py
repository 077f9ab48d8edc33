"""The pieces every training loop of the package shares: the model builder, the optimizer, one optimizer step.

``train.engine`` (language-model pretraining, on Accelerate), the task study (``evaluation.tasks``) and the
benchmark's training measurement (``bench``) all build models with ``build_causal_lm``, optimizers with
``build_optimizer`` and advance with ``optimizer_step``, so a change to how we train reaches all three.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch


def build_causal_lm(config, attn_implementation: str = "sdpa", device: torch.device | str | None = None):
    """A freshly initialized ``PosEncForCausalLM`` for ``config`` (seed first for reproducible weights).

    ``device``: initialize there directly (a large model initializes in seconds on CPU, not on GPU). The
    generation config takes the special token ids of ``config``, so ``generate`` pads and stops correctly.
    """
    from ..model.modeling_hf_posenc import PosEncForCausalLM

    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = PosEncForCausalLM(config)
    model.set_attn_implementation(attn_implementation)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, getattr(config, name))
    return model


def build_optimizer(model, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not on norms, biases or embedding tables).

    ``fused``: the fused CUDA kernel (True), the multi-tensor one (False) or torch's choice (None).
    """
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and id(param) not in embeddings else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kernel = {} if fused is None else {"fused": fused, "foreach": not fused}
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **kernel)


def optimizer_step(
    model,
    micro_batches: Sequence[dict],
    optimizer,
    scheduler=None,
    *,
    max_grad_norm: float | None = None,
    accelerator=None,
    forward: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step: forward and backward over the micro-batches, clipping, the optimizer and the schedule.

    ``micro_batches``: model keyword arguments (``input_ids``, ``labels``, ...), one dict per gradient-
    accumulation step; the gradients are those of the mean loss. ``max_grad_norm``: clip to this norm
    (``math.inf``: measure the norm but never clip; None: neither). ``accelerator``: an Accelerate
    ``Accelerator`` whose ``prepare`` wrapped model and optimizer (it then handles accumulation, distributed
    gradient sync and mixed precision); None: plain PyTorch. ``forward``: a compiled ``model`` to call instead.

    Returns the mean loss (detached, float32) and the gradient norm before clipping (None when not measured).
    """
    forward = forward or model
    count = len(micro_batches)
    mean_loss = None
    grad_norm = None
    for index, batch in enumerate(micro_batches):
        last = index == count - 1
        with accelerator.accumulate(model) if accelerator is not None else contextlib.nullcontext():
            loss = forward(**batch, use_cache=False).loss
            if accelerator is not None:
                accelerator.backward(loss)  # divides by its gradient_accumulation_steps
            else:
                (loss / count if count > 1 else loss).backward()
            if max_grad_norm is not None and (accelerator.sync_gradients if accelerator is not None else last):
                grad_norm = _clip(model, max_grad_norm, accelerator)
            if accelerator is not None or last:  # an Accelerate optimizer steps only when gradients are synced
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        contribution = loss.detach().float() / count if count > 1 else loss.detach().float()
        mean_loss = contribution if mean_loss is None else mean_loss + contribution
    if scheduler is not None and not getattr(optimizer, "step_was_skipped", False):  # fp16 overflow: no schedule step
        scheduler.step()
    return mean_loss, grad_norm


def _clip(model, max_grad_norm: float, accelerator) -> torch.Tensor:
    clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
    norm = clip(model.parameters(), max_grad_norm)
    device = next(model.parameters()).device
    return torch.as_tensor(0.0 if norm is None else norm, device=device)


__all__ = ["build_causal_lm", "build_optimizer", "optimizer_step"]
