"""TinyVLMConfig: a SigLIP vision config, a Llama text config and the projector between them.

The image sequence length is derived from the vision config, (image_size // patch_size) ** 2: SigLIP
has no CLS token, so every patch is kept (slicing off a "CLS" loses a real patch, TinyLLaVA #203).
"""

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING

# Both model keys are written so one saved folder loads with trust_remote_code under 4.57
# (AutoModelForVision2Seq) and 5.x (AutoModelForImageTextToText, Vision2Seq is gone).
_MODEL_AUTO_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq")


def _sub_config(value, default_type: str):
    if value is None:
        return CONFIG_MAPPING[default_type]()
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", default_type)
        return CONFIG_MAPPING[model_type](**value)
    return value


class TinyVLMConfig(PretrainedConfig):
    r"""
    vision_config: SiglipVisionConfig (or its dict), the vision tower.
    text_config: LlamaConfig (or its dict), the language model.
    projector_hidden_size: width of `linear_1`'s output; the LLM width by default (4096 when an old
        Llama-3 projector's `linear_1` is kept as trained).
    projector_hidden_act: activation between the projector's two linears.
    vision_feature_layer: index into the vision tower's hidden states (embeddings output is 0), as LLaVA;
        -2 = the penultimate layer.
    image_token_id: id of the `<image>` placeholder token in the tokenizer.
    projector_downsample_factor: k > 1 merges each k x k block of SigLIP patches into one image token
        before `linear_1` (the grid is zero-padded up to a multiple of k): 729 -> 196 (k=2) or 81 (k=3)
        tokens for so400m-384. The language model's prefill shrinks with the token count.
    projector_downsample_mode: "pixel_shuffle" (concatenate the k*k patch features, `linear_1` input
        k*k*vision_hidden, as Idefics3/SmolVLM) or "avg_pool" (average them, input stays vision_hidden).
    """

    model_type = "tinyvlm"
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        projector_hidden_size=None,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        image_token_id=None,
        projector_downsample_factor=1,
        projector_downsample_mode="pixel_shuffle",
        **kwargs,
    ):
        # Sub-configs must exist before super().__init__(): its attn-implementation setter recurses into them.
        self.vision_config = _sub_config(vision_config, "siglip_vision_model")
        self.text_config = _sub_config(text_config, "llama")
        self.projector_hidden_size = projector_hidden_size or self.text_config.hidden_size
        self.projector_hidden_act = projector_hidden_act
        self.vision_feature_layer = vision_feature_layer
        self.image_token_id = image_token_id
        self.projector_downsample_factor = int(projector_downsample_factor)
        self.projector_downsample_mode = projector_downsample_mode
        if self.projector_downsample_factor < 1:
            raise ValueError(f"projector_downsample_factor must be >= 1, got {projector_downsample_factor}")
        if projector_downsample_mode not in ("pixel_shuffle", "avg_pool"):
            raise ValueError(
                f"projector_downsample_mode must be 'pixel_shuffle' or 'avg_pool', got {projector_downsample_mode!r}"
            )
        kwargs.setdefault("tie_word_embeddings", getattr(self.text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)
        if not isinstance(vision_feature_layer, int):
            raise ValueError(f"vision_feature_layer must be one int, got {vision_feature_layer!r}")
        num_hidden_states = self.vision_config.num_hidden_layers + 1
        if not -num_hidden_states <= vision_feature_layer < num_hidden_states:
            raise ValueError(
                f"vision_feature_layer={vision_feature_layer} is outside the vision tower's "
                f"{num_hidden_states} hidden states (embeddings + {num_hidden_states - 1} layers)"
            )

    @property
    def vision_grid_size(self) -> int:
        """SigLIP patches per side (27 for so400m-384)."""
        return self.vision_config.image_size // self.vision_config.patch_size

    @property
    def image_seq_length(self) -> int:
        """Image tokens per image: one per SigLIP patch, or per k x k block when downsampling."""
        k = self.projector_downsample_factor
        return (-(-self.vision_grid_size // k)) ** 2

    @property
    def projector_input_size(self) -> int:
        k = self.projector_downsample_factor
        width = self.vision_config.hidden_size
        return width * k * k if self.projector_downsample_mode == "pixel_shuffle" else width

    @property
    def num_vision_layers_used(self) -> int:
        """Encoder layers that must run to produce hidden state `vision_feature_layer`."""
        num_hidden_states = self.vision_config.num_hidden_layers + 1
        return self.vision_feature_layer % num_hidden_states

    def to_dict(self):
        output = super().to_dict()
        auto_map = output.get("auto_map")
        if auto_map:
            model_ref = next((auto_map[k] for k in _MODEL_AUTO_CLASSES if k in auto_map), None)
            if model_ref is not None:
                for key in _MODEL_AUTO_CLASSES:
                    auto_map.setdefault(key, model_ref)
        return output
