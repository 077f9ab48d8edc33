"""A folder written by ``hf-posenc train`` fine-tunes with transformers' Trainer (causal LM and classification)."""

import random

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

import hf_posenc
from hf_posenc.data.corpus import embedded_corpus_root, load_text_dataset, tokenize_and_pack
from hf_posenc.train.run_config import RunConfig
from hf_posenc.train.engine import train

PRETRAIN_MODULES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py")
FINETUNE_MODULES = ("colorsys.py", "keyword.py", "string.py", "numbers.py")  # text the model has not seen


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two spin-waiting threads are several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small model trained by ``train`` (the model-directory contract)."""
    root = tmp_path_factory.mktemp("pretrained")
    corpus = root / "corpus"
    corpus.mkdir()
    for name in PRETRAIN_MODULES:
        (corpus / f"{name}.txt").write_text((embedded_corpus_root() / name).read_text())
    config = RunConfig.from_dict({
        "model": {"position_encoding": "alibi", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "max_position_embeddings": 64},
        "data": {"name": str(corpus), "block_size": 32},
        "tokenizer": {"vocab_size": 300, "cache_dir": str(root / "cache")},
        "training": {"max_steps": 10, "per_device_batch_size": 8, "lr": 1e-2, "warmup_steps": 2, "eval_steps": 0,
                     "eval_max_batches": 1, "save_steps": 0, "report_to": "none", "cpu_threads": 1},
    })
    train(config, root / "model", show_progress=False)
    return root / "model"


def arguments(output_dir, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=16, learning_rate=5e-3,
        warmup_steps=2, logging_steps=5, save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def logged_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_fine_tunes_the_saved_model_as_a_causal_lm(model_dir, tmp_path):
    folder = tmp_path / "text"
    folder.mkdir()
    for name in FINETUNE_MODULES:
        (folder / f"{name}.txt").write_text((embedded_corpus_root() / name).read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert isinstance(model, hf_posenc.PosEncForCausalLM) and model.config.position_encoding == "alibi"
    train_set = tokenize_and_pack(load_text_dataset(str(folder), "train"), tokenizer, 32)
    eval_set = tokenize_and_pack(load_text_dataset(str(folder), "validation"), tokenizer, 32)
    trainer = Trainer(
        model=model,
        args=arguments(tmp_path / "trainer", max_steps=30),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),  # labels = input_ids, shifted by the model
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    losses = logged_losses(trainer)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.3, losses
    assert after < before - 0.3, (before, after)


def contains_token_dataset(n: int, seed: int, marker: int = 7, length: int = 16):
    """Sequences of random tokens (ids 10..59); label 1 when ``marker`` occurs somewhere in the sequence."""
    import datasets

    rng = random.Random(seed)
    rows, labels = [], []
    for index in range(n):
        tokens = [rng.randrange(10, 60) for _ in range(length)]
        label = index % 2
        if label:
            tokens[rng.randrange(length)] = marker
        rows.append(tokens)
        labels.append(label)
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": labels})


def test_trainer_fine_tunes_sequence_classification_on_a_generated_task(model_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    assert isinstance(model, hf_posenc.PosEncForSequenceClassification)

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=arguments(tmp_path / "classifier", max_steps=80, per_device_train_batch_size=16, learning_rate=1e-2,
                       logging_steps=10),
        train_dataset=contains_token_dataset(1024, seed=0),
        eval_dataset=contains_token_dataset(256, seed=1),
        compute_metrics=accuracy,
    )
    trainer.train()
    losses = logged_losses(trainer)
    assert losses[-1] < losses[0] * 0.6, losses
    accuracy_after = trainer.evaluate()["eval_accuracy"]
    assert accuracy_after > 0.85
