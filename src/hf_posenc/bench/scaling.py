"""Time and memory against sequence length: one evaluation forward, or one forward+backward, at batch 1."""

from __future__ import annotations

import torch

from .measure import random_tokens, tensor_bytes


class ScalingJob:
    """One pass over a single sequence of ``seq_len`` random tokens (loss included, as in evaluation)."""

    def __init__(self, model, seq_len: int, kind: str, device: torch.device, seed: int = 0):
        if kind not in ("eval", "train"):
            raise ValueError(f"kind must be 'eval' or 'train', got {kind!r}")
        self.kind = f"{kind}_scaling"
        self.model = model
        self.training = kind == "train"
        self.input_ids = random_tokens(1, seq_len, model.config.vocab_size, device, seed)

    def run(self) -> None:
        if self.training:
            loss = self.model(input_ids=self.input_ids, labels=self.input_ids, use_cache=False).loss
            loss.backward()
            self.model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                self.model(input_ids=self.input_ids, labels=self.input_ids, use_cache=False)

    def persistent_bytes(self) -> int:
        return tensor_bytes(self.model.parameters())
