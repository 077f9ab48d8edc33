"""Synthetic length-generalization tasks: train on short instances, test exact-match accuracy on longer ones.

Three algorithmic tasks over decimal digits, generated in code (no data files):

* ``copy``:     ``<s> [copy] 3 1 4 =`` -> ``3 1 4 </s>``
* ``reverse``:  ``<s> [reverse] 3 1 4 =`` -> ``4 1 3 </s>``
* ``addition``: ``<s> [addition] 3 1 4 + 2 7 9 =`` -> ``5 8 3 1 </s>``; numbers are written least-significant
  digit first (413 + 972 = 1385 above), the order in which a left-to-right model can carry, as in the
  length-generalization literature. The answer always has ``length + 1`` digits (the last may be 0).

The *length* of an instance is its number of input digits (per operand for addition). One small decoder is
trained per position encoding on a mixture of the tasks with lengths in ``[train_min_length, train_max_length]``,
the loss on the answer tokens only; it is then tested at every ``test_lengths`` entry with greedy decoding
(``generate``, with the KV cache). An answer counts only if it is exactly right: every digit, then ``</s>``.

Vocabulary: a word-level ``tokenizers`` tokenizer over the digits, ``+``, ``=``, one token per task and the
special tokens; it is saved with the model so the task model folder loads with ``AutoTokenizer``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import run_folder
from ..errors import SettingsError
from ..settings import check_settings, load_settings, setting, to_dict

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
DIGITS = tuple(str(d) for d in range(10))
PLUS, SEP = "+", "="
TASK_NAMES = ("copy", "reverse", "addition")
VOCABULARY = (PAD, BOS, EOS, UNK, *DIGITS, PLUS, SEP, *(f"[{name}]" for name in TASK_NAMES))
IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt and padding)

TASK_SUMMARY_FILE = run_folder.TASK_SUMMARY_FILE
TASK_METRICS_FILE = run_folder.METRICS_FILE
EVAL_FILE = run_folder.EVAL_FILE


# ---- the tasks: inputs and their exact targets ----------------------------------------------------------
def copy_target(digits: Sequence[str]) -> list[str]:
    return list(digits)


def reverse_target(digits: Sequence[str]) -> list[str]:
    return list(reversed(digits))


def addition_target(a_digits: Sequence[str], b_digits: Sequence[str]) -> list[str]:
    """Sum of two equal-length numbers written least-significant digit first; ``len + 1`` digits, LSD first."""
    if len(a_digits) != len(b_digits):
        raise ValueError(f"addition operands must have the same length, got {len(a_digits)} and {len(b_digits)}")
    out, carry = [], 0
    for a, b in zip(a_digits, b_digits):
        total = int(a) + int(b) + carry
        out.append(str(total % 10))
        carry = total // 10
    out.append(str(carry))
    return out


@dataclass(frozen=True)
class TaskExample:
    task: str
    length: int
    prompt: tuple[str, ...]  # <s> [task] inputs =
    answer: tuple[str, ...]  # the target symbols, without </s>


def make_example(task: str, length: int, rng: random.Random) -> TaskExample:
    """One random instance of ``task`` with ``length`` input digits (per operand for addition)."""
    if task not in TASK_NAMES:
        raise SettingsError(f"unknown task {task!r}; choose from {list(TASK_NAMES)}", field="task")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise SettingsError(f"task length must be an integer >= 1, got {length!r}", field="length")
    digits = [rng.choice(DIGITS) for _ in range(length)]
    if task == "addition":
        other = [rng.choice(DIGITS) for _ in range(length)]
        inputs, answer = [*digits, PLUS, *other], addition_target(digits, other)
    else:
        inputs, answer = digits, (copy_target if task == "copy" else reverse_target)(digits)
    return TaskExample(task, length, (BOS, f"[{task}]", *inputs, SEP), tuple(answer))


def sequence_length(task: str, length: int) -> int:
    """Tokens of a full instance (prompt, answer and </s>): the positions a model must represent."""
    prompt = 3 + (2 * length + 1 if task == "addition" else length)  # <s> [task] ... =
    answer = length + 1 if task == "addition" else length
    return prompt + answer + 1


def exact_match_accuracy(predictions: Sequence[Sequence], targets: Sequence[Sequence]) -> float:
    """Share of predictions equal to their target, element for element (no partial credit)."""
    if len(predictions) != len(targets):
        raise ValueError(f"got {len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise ValueError("exact_match_accuracy needs at least one example")
    return sum(list(p) == list(t) for p, t in zip(predictions, targets)) / len(targets)


# ---- settings -------------------------------------------------------------------------------------------
@dataclass
class SmallModelSettings:
    """The shape of a task or passkey model (a ``PosEncConfig``; the encoding is set per run), built by
    ``task_model_config``."""

    hidden_size: int = setting(64, minimum=1)
    intermediate_size: int = setting(256, minimum=1)
    num_hidden_layers: int = setting(2, minimum=1)
    num_attention_heads: int = setting(4, minimum=1)
    num_key_value_heads: int | None = setting(None, minimum=1)
    attn_implementation: str = setting("sdpa", choices=("eager", "sdpa", "flex_attention"))
    initializer_range: float = setting(0.02, positive=True)  # std of the initial weights


@dataclass
class TaskSettings(SmallModelSettings):
    """What to train and test. The defaults are the CPU-sized study of ``configs/compare-tiny.yaml``."""

    tasks: list[str] = setting(default_factory=lambda: list(TASK_NAMES), choices=TASK_NAMES, label="task",
                               non_empty=True)
    train_min_length: int = setting(1, minimum=1)
    train_max_length: int = setting(8, minimum=1)
    test_lengths: list[int] = setting(default_factory=lambda: [4, 8, 12, 16, 24], minimum=1, non_empty=True)
    num_test_examples: int = setting(100, minimum=1)
    # training
    max_steps: int = setting(400, minimum=1)
    batch_size: int = setting(64, minimum=1)
    lr: float = setting(3e-3, positive=True)
    warmup_steps: int = setting(40, minimum=0)
    weight_decay: float = setting(0.0, minimum=0)
    max_grad_norm: float = setting(1.0, minimum=0)
    logging_steps: int = setting(50, minimum=1)
    seed: int = setting(0, minimum=0)
    eval_batch_size: int = setting(100, minimum=1)

    @classmethod
    def from_dict(cls, raw: dict | None, source: str = "tasks", prefix: str = "") -> TaskSettings:
        return load_settings(cls, raw, source, prefix)

    def to_dict(self) -> dict:
        return to_dict(self)

    def validate(self) -> None:
        """Every field rule and the cross-field checks (for settings built or changed in code)."""
        check_settings(self)

    def cross_check(self, prefix: str = "") -> None:
        if self.train_min_length > self.train_max_length:
            raise SettingsError(f"{prefix}train_min_length ({self.train_min_length}) must be <= "
                                f"{prefix}train_max_length ({self.train_max_length})", field=f"{prefix}train_min_length")

    @property
    def max_sequence_length(self) -> int:
        """The longest instance trained or tested: the model's max_position_embeddings (learned needs it)."""
        lengths = [*self.test_lengths, self.train_max_length]
        return max(sequence_length(task, length) for task in self.tasks for length in lengths)


# ---- tokenizer and model --------------------------------------------------------------------------------
def build_task_tokenizer():
    """A word-level fast tokenizer over ``VOCABULARY``: symbols are separated by spaces in text form."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({symbol: i for i, symbol in enumerate(VOCABULARY)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins symbols with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


SYMBOL_IDS = {symbol: i for i, symbol in enumerate(VOCABULARY)}


def encode(symbols: Sequence[str]) -> list[int]:
    return [SYMBOL_IDS[s] for s in symbols]


def task_model_config(position_encoding: str, settings: SmallModelSettings):
    """The ``PosEncConfig`` of a task (or passkey) model; a SettingsError when the encoding does not fit it (a
    per-layer pattern longer than the model's layers, say), so a study can refuse it before any training."""
    from ..model.configuration_hf_posenc import PosEncConfig

    try:
        return PosEncConfig(
            vocab_size=len(VOCABULARY),
            hidden_size=settings.hidden_size,
            intermediate_size=settings.intermediate_size,
            num_hidden_layers=settings.num_hidden_layers,
            num_attention_heads=settings.num_attention_heads,
            num_key_value_heads=settings.num_key_value_heads,
            max_position_embeddings=settings.max_sequence_length,
            position_encoding=position_encoding,
            pad_token_id=SYMBOL_IDS[PAD],
            bos_token_id=SYMBOL_IDS[BOS],
            eos_token_id=SYMBOL_IDS[EOS],
            initializer_range=settings.initializer_range,
        )
    except ValueError as error:
        raise SettingsError(f"invalid task model: {error}") from error


def build_task_model(position_encoding: str, settings: TaskSettings):
    """A freshly initialized small ``PosEncForCausalLM`` for the tasks (seed first for reproducibility)."""
    from ..train.step import build_causal_lm

    return build_causal_lm(task_model_config(position_encoding, settings), settings.attn_implementation)


# ---- training -------------------------------------------------------------------------------------------
def training_batch(settings: TaskSettings, rng: random.Random) -> dict[str, torch.Tensor]:
    """A right-padded batch of random training instances; labels are the answer tokens and </s> only."""
    rows, labels = [], []
    for _ in range(settings.batch_size):
        task = rng.choice(settings.tasks)
        example = make_example(task, rng.randint(settings.train_min_length, settings.train_max_length), rng)
        prompt, answer = encode(example.prompt), encode((*example.answer, EOS))
        rows.append(prompt + answer)
        labels.append([IGNORE_INDEX] * len(prompt) + answer)
    width = max(map(len, rows))
    pad = SYMBOL_IDS[PAD]
    input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows])  # (batch, width)
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    label_ids = torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for row in labels])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids}


def train_on_generated_batches(model, next_batch, *, lr: float, warmup_steps: int, max_steps: int,
                               weight_decay: float = 0.0, max_grad_norm: float = 1.0, logging_steps: int = 50,
                               description: str = "train", device=None, show_progress: bool = True):
    """The training engine's optimizer step in a plain loop over generated batches (synthetic tasks, passkey).

    No Accelerate and no checkpoints: the data is generated per step and a run takes minutes. ``next_batch()``
    returns a dict of (batch, width) tensors. Returns the logged rows ``{step, loss, lr}`` (the loss is the mean
    over each logging interval) and the last logged loss; raises RuntimeError when that loss is not finite.
    """
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from ..train.step import build_optimizer, optimizer_step

    optimizer = build_optimizer(model, lr, weight_decay, betas=(0.9, 0.98))
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, max_steps)
    rows, interval, last_loss = [], [], None
    model.train()
    progress = tqdm(range(1, max_steps + 1), desc=description, unit="step", disable=not show_progress)
    for step in progress:
        batch = {k: v.to(device) for k, v in next_batch().items()} if device is not None else next_batch()
        loss, _ = optimizer_step(model, [batch], optimizer, scheduler,
                                 max_grad_norm=max_grad_norm if max_grad_norm > 0 else None)
        interval.append(loss.item())
        if step % logging_steps == 0 or step == max_steps:
            last_loss = sum(interval) / len(interval)
            rows.append({"step": step, "loss": last_loss, "lr": scheduler.get_last_lr()[0]})
            progress.set_postfix(loss=f"{last_loss:.3f}")
            interval = []
    progress.close()
    model.eval()
    if not math.isfinite(last_loss):
        raise RuntimeError(f"{description}: training diverged (loss {last_loss}); lower the learning rate")
    return rows, last_loss


def train_task_model(position_encoding: str, settings: TaskSettings, *, device=None, show_progress: bool = True,
                     metrics_path: Path | None = None):
    """Train one task model; returns ``(model, summary)``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(settings.seed)
    model = build_task_model(position_encoding, settings).to(device)
    rng = random.Random(settings.seed)  # the same instances for every encoding
    start = time.perf_counter()
    rows, last_loss = train_on_generated_batches(
        model, lambda: training_batch(settings, rng), lr=settings.lr, warmup_steps=settings.warmup_steps,
        max_steps=settings.max_steps, weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm,
        logging_steps=settings.logging_steps, description=f"tasks {position_encoding}", device=device,
        show_progress=show_progress,
    )
    if metrics_path is not None:
        metrics_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = {
        "position_encoding": position_encoding,
        "max_steps": settings.max_steps,
        "final_loss": last_loss,
        "train_runtime_s": time.perf_counter() - start,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_lengths": [settings.train_min_length, settings.train_max_length],
        "settings": settings.to_dict(),
    }
    return model, summary


# ---- testing --------------------------------------------------------------------------------------------
def make_test_set(task: str, length: int, settings: TaskSettings) -> list[TaskExample]:
    """The fixed test set of one (task, length): seeded apart from training and from other cells."""
    rng = random.Random(f"test|{settings.seed}|{task}|{length}")
    return [make_example(task, length, rng) for _ in range(settings.num_test_examples)]


def answer_before_eos(generated: Sequence[int]) -> list[int]:
    """The generated ids up to (not including) the first </s>."""
    eos = SYMBOL_IDS[EOS]
    ids = list(generated)
    return ids[: ids.index(eos)] if eos in ids else ids


@torch.no_grad()
def greedy_answers(model, examples: Sequence[TaskExample], batch_size: int) -> list[list[int]]:
    """Greedy decoding with the KV cache (``generate``), ``len(answer) + 1`` new tokens, cut at </s>.

    All examples of one (task, length) have prompts of the same length, so batches need no padding.
    """
    answers = []
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = torch.tensor([encode(e.prompt) for e in chunk], device=device)  # (b, prompt_len)
        new_tokens = max(len(e.answer) for e in chunk) + 1  # the answer, then </s>
        output = model.generate(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=new_tokens,
            min_new_tokens=0,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            pad_token_id=SYMBOL_IDS[PAD],
            eos_token_id=SYMBOL_IDS[EOS],
        )
        answers += [answer_before_eos(row) for row in output[:, prompts.shape[1] :].tolist()]
    return answers


def evaluate_tasks(model, settings: TaskSettings, show_progress: bool = True, label: str = "") -> list[dict]:
    """Exact-match accuracy for every task and test length: ``[{"task", "length", "accuracy", "num_examples"}]``."""
    from tqdm.auto import tqdm

    cells = [(task, length) for task in settings.tasks for length in settings.test_lengths]
    results = []
    model.eval()
    for task, length in tqdm(cells, desc=f"test tasks {label}".strip(), unit="cell", disable=not show_progress):
        examples = make_test_set(task, length, settings)
        predictions = greedy_answers(model, examples, settings.eval_batch_size)
        accuracy = exact_match_accuracy(predictions, [encode(e.answer) for e in examples])
        results.append({
            "task": task,
            "length": length,
            "accuracy": accuracy,
            "num_examples": len(examples),
            "in_distribution": settings.train_min_length <= length <= settings.train_max_length,
        })
    return results


# ---- one encoding, end to end (used by compare) ---------------------------------------------------------
def task_dir_is_complete(path: Path, position_encoding: str, settings: TaskSettings) -> bool:
    """True when ``path`` holds a finished task study of this encoding with these very settings."""
    summary, evaluation = path / TASK_SUMMARY_FILE, path / EVAL_FILE
    if not (summary.is_file() and evaluation.is_file()):
        return False
    saved = json.loads(summary.read_text())
    return saved.get("position_encoding") == position_encoding and saved.get("settings") == settings.to_dict()


def run_task_study(position_encoding: str, settings: TaskSettings, output_dir: str | Path, *, overwrite: bool = False,
                   show_progress: bool = True) -> list[dict]:
    """Train and test one task model, saved to ``output_dir`` with an eval.json holding its task accuracies.

    Reuses a finished folder with the same settings unless ``overwrite``.
    """
    output_dir = Path(output_dir)
    if not overwrite and task_dir_is_complete(output_dir, position_encoding, settings):
        return json.loads((output_dir / EVAL_FILE).read_text())["tasks"]
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / TASK_SUMMARY_FILE).unlink(missing_ok=True)  # incomplete until the end
    model, summary = train_task_model(position_encoding, settings, show_progress=show_progress,
                                      metrics_path=output_dir / TASK_METRICS_FILE)
    start = time.perf_counter()
    results = evaluate_tasks(model, settings, show_progress=show_progress, label=position_encoding)
    summary["eval_runtime_s"] = time.perf_counter() - start
    model.save_pretrained(str(output_dir))
    build_task_tokenizer().save_pretrained(str(output_dir))
    description = f"synthetic tasks {settings.tasks}, lengths {settings.train_min_length}..{settings.train_max_length}"
    evaluation = {
        "model_dir": str(output_dir),
        "position_encoding": position_encoding,
        "train_length": settings.train_max_length,
        "data": run_folder.data_record("synthetic", "tasks", description=description),
        "variant": None,
        "split": None,
        "stride": None,
        "rope_scaling": None,
        "max_tokens": None,
        "max_windows": None,
        "eval_runtime_s": summary["eval_runtime_s"],
        "results": [],
        "tasks": results,
    }
    run_folder.write_eval(output_dir / EVAL_FILE, evaluation)
    (output_dir / TASK_SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return results


__all__ = [
    "TASK_NAMES",
    "TaskSettings",
    "TaskExample",
    "make_example",
    "copy_target",
    "reverse_target",
    "addition_target",
    "exact_match_accuracy",
    "build_task_tokenizer",
    "build_task_model",
    "train_task_model",
    "train_on_generated_batches",
    "evaluate_tasks",
    "run_task_study",
]
