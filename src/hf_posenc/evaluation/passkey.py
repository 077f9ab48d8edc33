"""Passkey retrieval: a key hidden at a chosen depth in filler, asked for at the end; generated in code, offline.

One instance (``key_digits=4``, context 16)::

    <s> 7 3 0 9 1 + 5 2 8 4 + 6 0 2 =      ->  5 2 8 4 </s>
        filler    key marked by +   filler

The filler is random digits, so the two ``+`` markers are the only way to find the key: the model must
retrieve it from wherever it sits. *Context* is the number of prompt tokens; *depth* is the share of the
filler that comes before the key (0: right after ``<s>``, 1: right before ``=``). A model per encoding is
trained on contexts up to ``train_context`` at random depths, then tested with greedy decoding at every
``(context, depth)`` cell; accuracy is exact match of the key. The vocabulary, tokenizer and model are the
synthetic tasks' (``hf_posenc.evaluation.tasks``).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import run_folder
from ..errors import SettingsError, UsageError
from ..settings import load_settings, setting, to_dict
from .tasks import (BOS, DIGITS, EOS, IGNORE_INDEX, PAD, PLUS, SEP, SYMBOL_IDS, SmallModelSettings, TaskExample,
                    build_task_model, build_task_tokenizer, encode, exact_match_accuracy, greedy_answers,
                    train_on_generated_batches)



@dataclass
class PasskeySettings(SmallModelSettings):
    """The CPU-sized default; ``configs/compare-small.yaml`` scales it up."""

    key_digits: int = setting(4, minimum=1)
    train_context: int = setting(32, minimum=1)  # longest training prompt (tokens)
    test_contexts: list[int] = setting(default_factory=lambda: [16, 32, 64, 128], minimum=1, non_empty=True)
    depths: list[float] = setting(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], minimum=0, non_empty=True)
    num_test_examples: int = setting(20, minimum=1)
    intermediate_size: int = setting(128, minimum=1)  # the model: SmallModelSettings, narrower MLP by default
    max_steps: int = setting(300, minimum=1)
    batch_size: int = setting(32, minimum=1)
    lr: float = setting(3e-3, positive=True)
    warmup_steps: int = setting(30, minimum=0)
    seed: int = setting(0, minimum=0)

    @classmethod
    def from_dict(cls, raw: dict | None, source: str = "passkey", prefix: str = "") -> PasskeySettings:
        return load_settings(cls, raw, source, prefix)

    def to_dict(self) -> dict:
        return to_dict(self)

    def cross_check(self, prefix: str = "") -> None:
        if any(d > 1 for d in self.depths):
            raise SettingsError(f"{prefix}depths must be numbers in [0, 1], got {self.depths!r}", field=f"{prefix}depths")
        for name, values in (("train_context", [self.train_context]), ("test_contexts", self.test_contexts)):
            if min(values) < self.min_context:
                raise SettingsError(f"{prefix}{name} must be an integer >= {self.min_context} (<s>, two markers, "
                                    f"the {self.key_digits}-digit key and =), got {values if len(values) > 1 else values[0]!r}",
                                    field=f"{prefix}{name}")

    @property
    def min_context(self) -> int:
        """<s>, the two markers, the key and = : the shortest prompt (no filler)."""
        return self.key_digits + 4

    @property
    def max_sequence_length(self) -> int:
        """Prompt, answer and </s> of the longest instance: the task model's max_position_embeddings."""
        return max(self.train_context, *self.test_contexts) + self.key_digits + 1


def make_passkey_example(context: int, depth: float, key_digits: int, rng: random.Random) -> TaskExample:
    """One instance whose prompt has exactly ``context`` tokens, the key after ``round(depth * filler)`` filler."""
    filler = context - (key_digits + 4)
    if filler < 0:
        raise UsageError(f"a passkey prompt with a {key_digits}-digit key needs context >= {key_digits + 4}, got {context}")
    before = round(depth * filler)
    key = [rng.choice(DIGITS) for _ in range(key_digits)]
    noise = [rng.choice(DIGITS) for _ in range(filler)]
    prompt = (BOS, *noise[:before], PLUS, *key, PLUS, *noise[before:], SEP)
    return TaskExample("passkey", context, prompt, tuple(key))


def passkey_batch(settings: PasskeySettings, rng: random.Random) -> dict[str, torch.Tensor]:
    """Right-padded training instances at random contexts (up to train_context) and depths; loss on the key only."""
    rows, labels = [], []
    for _ in range(settings.batch_size):
        context = rng.randint(settings.min_context, settings.train_context)
        example = make_passkey_example(context, rng.random(), settings.key_digits, rng)
        prompt, answer = encode(example.prompt), encode((*example.answer, EOS))
        rows.append(prompt + answer)
        labels.append([IGNORE_INDEX] * len(prompt) + answer)
    width = max(map(len, rows))
    pad = SYMBOL_IDS[PAD]
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),  # (batch, width)
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([r + [IGNORE_INDEX] * (width - len(r)) for r in labels]),
    }


def train_passkey_model(position_encoding: str, settings: PasskeySettings, *, show_progress: bool = True):
    """Train one model on passkey retrieval; returns ``(model, final_loss)`` (mean loss of the last 20 steps)."""
    torch.manual_seed(settings.seed)
    model = build_task_model(position_encoding, settings)  # reads the model fields and max_sequence_length
    rng = random.Random(f"passkey-train|{settings.seed}")  # the same instances for every encoding
    _, final_loss = train_on_generated_batches(
        model, lambda: passkey_batch(settings, rng), lr=settings.lr, warmup_steps=settings.warmup_steps,
        max_steps=settings.max_steps, logging_steps=20, description=f"passkey {position_encoding}",
        show_progress=show_progress,
    )
    return model, final_loss


def evaluate_passkey(model, settings: PasskeySettings) -> list[dict]:
    """Exact-match accuracy at every (context, depth) cell, on fixed seeded instances."""
    cells = []
    for context in settings.test_contexts:
        for depth in settings.depths:
            rng = random.Random(f"passkey-test|{settings.seed}|{context}|{depth}")
            examples = [make_passkey_example(context, depth, settings.key_digits, rng)
                        for _ in range(settings.num_test_examples)]
            predictions = greedy_answers(model, examples, batch_size=len(examples))
            cells.append({"context": context, "depth": depth, "num_examples": len(examples),
                          "accuracy": exact_match_accuracy(predictions, [encode(e.answer) for e in examples]),
                          "in_distribution": context <= settings.train_context})
    return cells


def passkey_dir_is_complete(path: Path, position_encoding: str, settings: PasskeySettings) -> bool:
    saved = run_folder.read_passkey(path)
    return saved is not None and saved.get("position_encoding") == position_encoding and saved.get("settings") == settings.to_dict()


def run_passkey_study(position_encoding: str, settings: PasskeySettings, output_dir: str | Path, *,
                      overwrite: bool = False, show_progress: bool = True) -> list[dict]:
    """Train and test one passkey model; ``output_dir`` gets the model and ``passkey.json``. Reused when current."""
    output_dir = Path(output_dir)
    if not overwrite and passkey_dir_is_complete(output_dir, position_encoding, settings):
        return run_folder.read_passkey(output_dir)["results"]
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / run_folder.PASSKEY_FILE).unlink(missing_ok=True)  # incomplete until the end
    start = time.perf_counter()
    model, final_loss = train_passkey_model(position_encoding, settings, show_progress=show_progress)
    results = evaluate_passkey(model, settings)
    model.save_pretrained(str(output_dir))
    build_task_tokenizer().save_pretrained(str(output_dir))
    run_folder.write_passkey(output_dir, {
        "position_encoding": position_encoding, "settings": settings.to_dict(), "final_loss": final_loss,
        "runtime_s": time.perf_counter() - start, "results": results,
    })
    return results


__all__ = ["PasskeySettings", "make_passkey_example", "train_passkey_model", "evaluate_passkey",
           "run_passkey_study", "passkey_dir_is_complete"]
