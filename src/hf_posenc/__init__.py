"""hf_posenc: one Llama-style Hugging Face model, six swappable position encodings.

Importing the package registers ``PosEncConfig`` and the model classes with transformers' Auto classes, and
marks them for remote code so that ``save_pretrained`` folders load with ``trust_remote_code=True`` where
hf_posenc is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .model.configuration_hf_posenc import PosEncConfig
from .model.conversion import config_from_llama, from_llama
from .model.encodings_hf_posenc import (
    POSITION_ENCODINGS,
    PerLayerPositionEncoding,
    PositionEncoding,
    available_position_encodings,
    position_encoding_class,
    register_position_encoding,
    unregister_position_encoding,
)
from .model.modeling_hf_posenc import (
    PosEncForCausalLM,
    PosEncForSequenceClassification,
    PosEncModel,
    PosEncPreTrainedModel,
)

from .version import __version__

AutoConfig.register(PosEncConfig.model_type, PosEncConfig, exist_ok=True)
AutoModel.register(PosEncConfig, PosEncModel, exist_ok=True)
AutoModelForCausalLM.register(PosEncConfig, PosEncForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(PosEncConfig, PosEncForSequenceClassification, exist_ok=True)

# Remote code: save_pretrained writes `auto_map` and copies the flat model files next to the weights.
PosEncConfig.register_for_auto_class()
PosEncModel.register_for_auto_class("AutoModel")
PosEncForCausalLM.register_for_auto_class("AutoModelForCausalLM")
PosEncForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "PosEncConfig",
    "PosEncPreTrainedModel",
    "PosEncModel",
    "PosEncForCausalLM",
    "PosEncForSequenceClassification",
    "PositionEncoding",
    "POSITION_ENCODINGS",
    "register_position_encoding",
    "unregister_position_encoding",
    "available_position_encodings",
    "position_encoding_class",
    "PerLayerPositionEncoding",
    "from_llama",
    "config_from_llama",
]
