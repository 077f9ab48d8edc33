"""The shared training step, optimizer and model builder (hf_posenc.train.step), and who uses them."""

from __future__ import annotations

import copy

import torch

import hf_posenc.train.step as step_module
from hf_posenc import PosEncConfig
from hf_posenc.train.step import build_causal_lm, build_optimizer, optimizer_step


def tiny_config(**overrides) -> PosEncConfig:
    fields = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  max_position_embeddings=32, position_encoding="alibi", pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return PosEncConfig(**(fields | overrides))


def test_builder_sets_backend_and_generation_ids():
    torch.manual_seed(0)
    model = build_causal_lm(tiny_config(pad_token_id=3), "eager")
    assert model.config._attn_implementation == "eager"
    assert (model.generation_config.pad_token_id, model.generation_config.eos_token_id) == (3, 2)


def test_optimizer_decays_matrices_only():
    torch.manual_seed(0)
    model = build_causal_lm(tiny_config())
    decay, no_decay = build_optimizer(model, lr=1e-3, weight_decay=0.1).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and model.model.embed_tokens.weight in no_decay["params"]


def test_accumulated_micro_batches_give_the_step_of_the_whole_batch():
    torch.manual_seed(0)
    model = build_causal_lm(tiny_config())
    twin = copy.deepcopy(model)
    ids = torch.randint(3, 50, (4, 12), generator=torch.Generator().manual_seed(1))
    halves = [{"input_ids": ids[:2], "labels": ids[:2]}, {"input_ids": ids[2:], "labels": ids[2:]}]
    # SGD: its step is proportional to the gradient, so a wrong accumulation scale shows (Adam would hide it)
    loss_a, _ = optimizer_step(model, halves, torch.optim.SGD(model.parameters(), lr=0.5))
    loss_b, _ = optimizer_step(twin, [{"input_ids": ids, "labels": ids}], torch.optim.SGD(twin.parameters(), lr=0.5))
    torch.testing.assert_close(loss_a, loss_b)  # equal-length rows: the mean of the halves is the whole mean
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_clipping_reports_the_norm_before_clipping_and_schedules_once():
    torch.manual_seed(0)
    model = build_causal_lm(tiny_config())
    optimizer = build_optimizer(model, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    ids = torch.randint(3, 50, (2, 12), generator=torch.Generator().manual_seed(2))
    loss, norm = optimizer_step(model, [{"input_ids": ids, "labels": ids}], optimizer, scheduler, max_grad_norm=1e-3)
    assert torch.isfinite(loss) and norm > 1e-3  # a random model's gradient is far above the clip
    assert scheduler.last_epoch == 1
    _, unmeasured = optimizer_step(model, [{"input_ids": ids, "labels": ids}], optimizer)
    assert unmeasured is None


def test_task_study_and_bench_train_through_the_shared_step(monkeypatch):
    from hf_posenc.bench import measure
    from hf_posenc.evaluation.tasks import TaskSettings, train_task_model

    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("forward"))
        return real(*args, **kwargs)

    real = step_module.optimizer_step
    monkeypatch.setattr(step_module, "optimizer_step", counting)
    monkeypatch.setattr(measure, "optimizer_step", counting)
    settings = TaskSettings(max_steps=3, batch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            logging_steps=1, test_lengths=[2])
    train_task_model("nope", settings, show_progress=False)
    assert len(calls) == 3
    from hf_posenc.evaluation.passkey import PasskeySettings, train_passkey_model

    passkey = PasskeySettings(max_steps=2, batch_size=2, train_context=12, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1)
    train_passkey_model("nope", passkey, show_progress=False)
    assert len(calls) == 5  # the passkey models train through the same step
    torch.manual_seed(0)
    job = measure.TrainJob(build_causal_lm(tiny_config()), batch=1, seq_len=8, device=torch.device("cpu"), compiled=False)
    job.run()
    assert len(calls) == 6 and job.last_loss is not None
