"""What the benchmark measures: presets (model shape and workload), the models it builds, the attention choice.

Every hf_posenc encoding is built with the same Llama shape, next to transformers' own models of that shape:
``hf:llama`` (LlamaForCausalLM, always), ``hf:gpt2`` (GPT2LMHeadModel, paired with ``learned``) and ``hf:bloom``
(BloomForCausalLM, paired with ``alibi``). T5 has no decoder-only transformers equivalent.

Only torch and transformers are imported here: the benchmark must run on GPU machines without datasets,
evaluate or matplotlib.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..model.configuration_hf_posenc import PosEncConfig
from ..model.encodings_hf_posenc import position_encoding_class
from ..errors import SettingsError

ATTN_CHOICES = ("auto", "sdpa", "flex_attention", "eager")
MODES = ("train", "decode", "scaling")


@dataclass(frozen=True)
class BenchPreset:
    """A model shape plus the workload run on it."""

    name: str
    shape: dict  # PosEncConfig / LlamaConfig fields
    train_batch: int
    train_seq_len: int
    decode_prompt_len: int
    decode_new_tokens: int
    decode_batches: tuple[int, ...]
    scaling_lengths: tuple[int, ...]
    description: str = ""


PRESETS = {
    # A CPU-minutes model: big enough that attention and the encodings show up, small enough for 2 cores.
    "tiny": BenchPreset(
        name="tiny",
        shape=dict(
            vocab_size=1024,
            hidden_size=128,
            intermediate_size=352,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
        ),
        train_batch=4,
        train_seq_len=256,
        decode_prompt_len=16,
        decode_new_tokens=32,
        decode_batches=(1, 8),
        scaling_lengths=(128, 256, 512, 1024),
        description="4 layers, d=128, 4 heads, vocab 1024; CPU",
    ),
    # The GPU shape of the speed targets: transformers' Llama at 12 layers, d=768 (134M parameters), 8 x 2048 tokens.
    "small-125m": BenchPreset(
        name="small-125m",
        shape=dict(
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=12,
            max_position_embeddings=2048,
        ),
        train_batch=8,
        train_seq_len=2048,
        decode_prompt_len=128,
        decode_new_tokens=128,
        decode_batches=(1, 32),
        scaling_lengths=(1024, 2048, 4096, 8192, 16384),
        description="12 layers, d=768, 12 heads, vocab 32000 (134M); GPU, bf16",
    ),
}

# transformers' models benchmarked next to ours, and the encoding each one corresponds to (None: always run).
REFERENCE_MODELS = {"hf:llama": "rope", "hf:gpt2": "learned", "hf:bloom": "alibi"}
REFERENCE_ALWAYS = ("hf:llama",)


def get_preset(name: str, **overrides) -> BenchPreset:
    if name not in PRESETS:
        raise SettingsError(f"preset must be one of {sorted(PRESETS)}, got {name!r}", field="preset")
    preset = PRESETS[name]
    overrides = {key: value for key, value in overrides.items() if value is not None}
    return dataclasses.replace(preset, **overrides) if overrides else preset


def model_names(encodings: list[str], references: list[str] | None = None) -> list[str]:
    """The benchmark's model list: ``hf_posenc:<encoding>`` for each encoding plus the matching references.

    ``references=None`` picks them automatically (hf:llama always, hf:gpt2 with learned, hf:bloom with alibi).
    """
    names = [f"hf_posenc:{encoding}" for encoding in encodings]
    if references is None:
        references = [
            name for name, paired in REFERENCE_MODELS.items() if name in REFERENCE_ALWAYS or paired in encodings
        ]
    unknown = [name for name in references if name not in REFERENCE_MODELS]
    if unknown:
        raise SettingsError(f"references must be among {sorted(REFERENCE_MODELS)}, got {unknown}", field="references")
    return names + list(references)


def validate_encodings(encodings: list[str]) -> list[str]:
    """Registered names and per-layer patterns of them, without repeats."""
    for name in encodings:
        try:
            position_encoding_class(name)
        except ValueError as error:
            raise SettingsError(
                f"encodings must be among the registered encodings and per-layer patterns of them: {error}",
                field="encodings",
            ) from None
    if not encodings:
        raise SettingsError("encodings must name at least one encoding", field="encodings")
    return list(dict.fromkeys(encodings))


def encoding_has_score_bias(encoding: str) -> bool:
    """Whether an encoding adds a bias to attention scores (alibi, t5_bias, registered bias encodings).

    Asked of the encoding itself (does it override ``score_bias``? a pattern: does one of its parts?), so registered
    encodings are covered.
    """
    return position_encoding_class(encoding).acts_at("score_bias")


def resolve_attn_implementation(requested: str, model: str, device: torch.device, mode: str, shape: dict) -> str:
    """The attention backend a benchmark row runs with.

    ``requested`` is used as given, except ``"auto"``, an explicit choice documented in docs/benchmark.md:

    * transformers' Bloom supports eager only; GPT-2 and Llama run SDPA;
    * an hf_posenc encoding that adds a score bias (alibi, t5_bias, registered ones) runs FlexAttention for
      training and long evaluation on CUDA (its ``score_mod`` never builds an L x L bias; the SDPA path has to
      build a (heads, q, kv) float mask and loses the flash kernel), and SDPA for decoding (one query per
      step: the mask is tiny and FlexAttention would rebuild its block mask every step) and on CPU
      (FlexAttention has no CPU backward and compiles slowly there);
    * every other encoding runs SDPA (flash attention with ``is_causal``).

    ``auto`` never changes a model's numbers beyond kernel rounding: every backend computes the same attention.
    """
    if requested not in ATTN_CHOICES:
        raise SettingsError(f"attn must be one of {list(ATTN_CHOICES)}, got {requested!r}", field="attn")
    if model == "hf:bloom":
        return "eager"  # BloomForCausalLM has no SDPA / flex path in transformers 5.x
    if requested != "auto":
        return requested
    if model.startswith("hf:"):
        return "sdpa"
    encoding = model.split(":", 1)[1]
    if device.type == "cuda" and mode in ("train", "scaling") and encoding_has_score_bias(encoding):
        return "flex_attention"
    return "sdpa"


def build_model(
    name: str,
    shape: dict,
    attn_implementation: str,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    max_position_embeddings: int | None = None,
):
    """Build ``hf_posenc:<encoding>`` or a transformers reference of the same shape, randomly initialized."""
    shape = dict(shape)
    if max_position_embeddings is not None:
        shape["max_position_embeddings"] = max(shape["max_position_embeddings"], max_position_embeddings)
    # Untied embeddings everywhere, as transformers' Llama at this size: same parameter layout for all models.
    common = dict(tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    with torch.device(device):  # initialize in place: a 134M model initializes in seconds on CPU, not on GPU
        model = _construct(name, shape, common)
    model.set_attn_implementation(attn_implementation)  # raises if the model does not support it
    return model.to(device=device, dtype=dtype)


def _construct(name: str, shape: dict, common: dict):
    from transformers import (
        BloomConfig,
        BloomForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from ..train.step import build_causal_lm

    if name.startswith("hf_posenc:"):
        config = PosEncConfig(**shape, **common, position_encoding=name.split(":", 1)[1])
        model = build_causal_lm(config)
    elif name == "hf:llama":
        config = LlamaConfig(**shape, **common)
        model = LlamaForCausalLM(config)
    elif name == "hf:gpt2":
        # GPT-2's GELU MLP has 2 matrices to SwiGLU's 3: n_inner = 1.5 x intermediate keeps the parameter count.
        config = GPT2Config(
            vocab_size=shape["vocab_size"],
            n_positions=shape["max_position_embeddings"],
            n_embd=shape["hidden_size"],
            n_layer=shape["num_hidden_layers"],
            n_head=shape["num_attention_heads"],
            n_inner=shape["intermediate_size"] * 3 // 2,
            **common,
        )
        model = GPT2LMHeadModel(config)
    elif name == "hf:bloom":
        # Bloom's MLP is fixed at 4 x hidden (close to 1.5 x intermediate for Llama shapes); ALiBi built in.
        config = BloomConfig(
            vocab_size=shape["vocab_size"],
            hidden_size=shape["hidden_size"],
            n_layer=shape["num_hidden_layers"],
            n_head=shape["num_attention_heads"],
            **common,
        )
        model = BloomForCausalLM(config)
    else:
        raise SettingsError(f"unknown benchmark model {name!r}")
    return model


def count_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def train_flops_per_token(num_parameters: int, num_layers: int, attention_width: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N for the weights plus 6 * layers * width * seq for causal attention.

    The attention term is the PaLM appendix's 12 * layers * width * seq halved for the causal mask. With N
    counting every parameter this reproduces the reference MFU figures (docs/benchmark.md) for transformers' Llama (29.9% and
    43.8% at 259.8k and 381.2k tokens/s on an H200 rated 798 TFLOP/s).
    """
    return 6.0 * num_parameters + 6.0 * num_layers * attention_width * seq_len


@dataclass
class ModelInfo:
    """Static facts about a built model that go into every record."""

    name: str
    attn_implementation: str
    num_parameters: int
    num_layers: int
    attention_width: int
    extra: dict = field(default_factory=dict)


def describe(name: str, model, attn_implementation: str, shape: dict) -> ModelInfo:
    return ModelInfo(
        name=name,
        attn_implementation=attn_implementation,
        num_parameters=count_parameters(model),
        num_layers=shape["num_hidden_layers"],
        attention_width=shape["hidden_size"],
    )
