"""tinyvlm: SigLIP -> MLP projector -> TinyLlama-1.1B, packaged the Hugging Face way.

Importing `tinyvlm` registers the `tinyvlm` architecture with transformers' Auto classes.
"""

from .modeling_tinyvlm import (  # noqa: F401
    TinyVLMConfig,
    TinyVLMForConditionalGeneration,
    TinyVLMPreTrainedModel,
    TinyVLMProcessor,
)

__version__ = "0.1.0"
