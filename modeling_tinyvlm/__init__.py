"""The tinyvlm architecture: config, model and processor, registered with transformers' Auto classes.

The three `*_tinyvlm.py` files are exactly what `save_pretrained` copies next to the weights, so a saved
folder loads with `trust_remote_code=True` where this package is not installed.
"""

import transformers
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from .configuration_tinyvlm import TinyVLMConfig
from .modeling_tinyvlm import TinyVLMForConditionalGeneration, TinyVLMPreTrainedModel
from .processing_tinyvlm import DEFAULT_CHAT_TEMPLATE, TinyVLMProcessor

AutoConfig.register("tinyvlm", TinyVLMConfig, exist_ok=True)
AutoModelForImageTextToText.register(TinyVLMConfig, TinyVLMForConditionalGeneration, exist_ok=True)
if hasattr(transformers, "AutoModelForVision2Seq"):  # removed in 5.0
    transformers.AutoModelForVision2Seq.register(
        TinyVLMConfig, TinyVLMForConditionalGeneration, exist_ok=True
    )
AutoProcessor.register(TinyVLMConfig, TinyVLMProcessor, exist_ok=True)

# So that save_pretrained (and every Trainer checkpoint) copies the code files and writes `auto_map`.
TinyVLMConfig.register_for_auto_class()
TinyVLMForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
TinyVLMProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "TinyVLMConfig",
    "TinyVLMForConditionalGeneration",
    "TinyVLMPreTrainedModel",
    "TinyVLMProcessor",
]
