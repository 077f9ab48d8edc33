"""The one loader of a trained model folder: every weight present and used, or a one-line error.

``from_pretrained`` quietly re-initializes a tensor the checkpoint lacks (and drops one it does not know),
so a damaged folder would still "work" and report a perplexity of random weights. ``load_model_folder``
refuses that: missing, unexpected or mis-shaped tensors, unreadable weight files and configs that are not
an hf_posenc config all become ``UsageError`` naming the folder and what is wrong. ``eval``, ``figures``
and ``push`` load through it. (Not a remote-code file: ``save_pretrained`` does not copy it.)
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError


def _one_line(error: BaseException, limit: int = 300) -> str:
    return " ".join(str(error).split())[:limit]


def load_model_folder(path: str | os.PathLike, model_class=None, **kwargs):
    """``model_class.from_pretrained(path, **kwargs)`` (default ``PosEncForCausalLM``), strictly."""
    from safetensors import SafetensorError

    if model_class is None:
        from .modeling_hf_posenc import PosEncForCausalLM as model_class
    path = Path(path)
    try:
        model, info = model_class.from_pretrained(str(path), output_loading_info=True, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as error:
        raise UsageError(f"cannot load the model in {str(path)!r}: {_one_line(error)}") from None
    problems = {key: sorted(value) if isinstance(value, (set, list)) else value
                for key, value in info.items() if value}  # missing / unexpected / mismatched keys, errors
    if problems:
        raise UsageError(f"the weights in {str(path)!r} do not match its config.json: {_one_line(problems)}")
    return model


def load_tokenizer_folder(path: str | os.PathLike):
    """``AutoTokenizer.from_pretrained(path)``; a damaged tokenizer file becomes a one-line ``UsageError``."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as error:  # tokenizers raises its own Exception subclass for a damaged tokenizer.json
        raise UsageError(f"cannot load the tokenizer in {str(path)!r}: {_one_line(error)}") from None


__all__ = ["load_model_folder", "load_tokenizer_folder"]
