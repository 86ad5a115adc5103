"""TinyVLM: SigLIP vision tower -> MLP projector -> Llama language model (LLaVA-shaped).

Data flow (so400m-patch14-384 + TinyLlama-1.1B):

    pixel_values (num_images, 3, 384, 384)
      -> vision_tower: SigLIP embeddings + the first `num_vision_layers_used` encoder layers
         (num_images, 729, 1152)    hidden state `vision_feature_layer` (-2), every patch kept
      -> multi_modal_projector: [optional k x k patch merge, 729 -> 81 tokens for k=3]
         linear_1 (1152 -> P) -> GELU -> linear_2 (P -> 2048)
      -> scattered into the LLM input embeddings at the `<image>` token positions
      -> language_model: LlamaForCausalLM -> logits, loss from `labels`, KV cache for generate()

Design choices:
- Module names follow transformers' Llava (`vision_tower`, `multi_modal_projector.linear_1/2`,
  `language_model`), so Llava conversion is a key rename. The saved key layout is ours and does not
  depend on the installed transformers: 4.x nests SigLIP under `.vision_model`, 5.x does not; we always
  keep the flat module (`vision_tower.embeddings...`).
- Only the encoder layers up to `vision_feature_layer` run. LLaVA asks SigLIP for every hidden state and
  throws away the last layer, the post-layernorm and the pooling head; the result is the same tensor.
- transformers 5.24 renamed the cache argument `past_key_values` -> `cache`. We accept both and pass
  the one the installed language model takes (dropping it would silently disable the KV cache).
- Nothing is frozen here; the training phases decide (projector warm-up freezes tower and LLM).
- `labelled_logits_only` (off by default, `tinyvlm train` turns it on): in training mode with labels,
  lm_head and the loss run only at positions that have a label. LLaVA data labels the answers alone,
  and at 2048 tokens x 32k vocabulary the full fp32 logits, log-probabilities and their gradients are
  the largest tensors of a LoRA step. The loss is the same; `logits` is then None (as with Liger's
  fused loss); evaluation (eval mode) gets full logits.
"""

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging

from .configuration_tinyvlm import TinyVLMConfig

try:  # 5.x: these initialisers skip parameters already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # 4.x
    from torch.nn import init

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
# Language models whose causal-LM head is exactly lm_head(hidden) (no logit scaling or soft-capping),
# so that the labelled-positions loss equals theirs.
LABELLED_LOGITS_MODEL_TYPES = {"llama"}


@dataclass
class TinyVLMCausalLMOutputWithPast(CausalLMOutputWithPast):
    """The language model's output (its cache field is named as the installed transformers names it),
    plus the projected image features `(num_images, image_seq_length, text_hidden)`."""

    image_hidden_states: torch.FloatTensor | None = None


def downsample_patches(features: torch.Tensor, grid: int, factor: int, mode: str) -> torch.Tensor:
    """Merge each factor x factor block of patches: (n, grid*grid, c) -> (n, ceil(grid/factor)**2, c')
    with c' = c*factor*factor (pixel_shuffle) or c (avg_pool). The grid is zero-padded to a multiple of
    factor (27 -> 28 for 2x2); avg_pool averages only the real patches of an edge block."""
    if factor == 1:
        return features
    n, _, c = features.shape
    out = -(-grid // factor)
    if mode == "avg_pool":
        x = features.transpose(1, 2).reshape(n, c, grid, grid)
        x = nn.functional.avg_pool2d(x, factor, ceil_mode=True)  # divisor clipped to the real patches
        return x.flatten(2).transpose(1, 2)
    x = features.reshape(n, grid, grid, c)
    pad = out * factor - grid
    x = nn.functional.pad(x, (0, 0, 0, pad, 0, pad))  # (n, out*factor, out*factor, c)
    x = x.reshape(n, out, factor, out, factor, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, out * out, factor * factor * c)


class TinyVLMMultiModalProjector(nn.Module):
    def __init__(self, config: TinyVLMConfig):
        super().__init__()
        self.grid = config.vision_grid_size
        self.downsample_factor = config.projector_downsample_factor
        self.downsample_mode = config.projector_downsample_mode
        self.linear_1 = nn.Linear(config.projector_input_size, config.projector_hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.projector_hidden_size, config.text_config.hidden_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        # (num_images, num_patches, vision_hidden) -> (num_images, image_seq_length, text_hidden)
        x = downsample_patches(image_features, self.grid, self.downsample_factor, self.downsample_mode)
        return self.linear_2(self.act(self.linear_1(x)))


class TinyVLMPreTrainedModel(PreTrainedModel):
    config_class = TinyVLMConfig
    config: TinyVLMConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["SiglipEncoderLayer", "SiglipVisionEmbeddings", "LlamaDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    # Attention flags are read on the top-level class; both sub-models support all of these.
    _supports_flash_attn = True
    _supports_flash_attn_2 = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _supports_cache_class = True
    _supports_static_cache = True
    _supports_quantized_cache = True
    _can_compile_fullgraph = True

    def _init_weights(self, module):
        # The sub-models initialise themselves; only the projector is ours.
        if isinstance(module, TinyVLMMultiModalProjector):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            for linear in (module.linear_1, module.linear_2):
                init.normal_(linear.weight, mean=0.0, std=std)
                init.zeros_(linear.bias)


def _build_vision_tower(vision_config) -> nn.Module:
    if vision_config.model_type != "siglip_vision_model":
        raise ValueError(
            f"vision_config.model_type must be 'siglip_vision_model', got {vision_config.model_type!r}"
        )
    tower = AutoModel.from_config(vision_config)
    # 4.x: SiglipVisionModel -> .vision_model (embeddings, encoder, post_layernorm, head); 5.x: flat.
    return getattr(tower, "vision_model", tower)


def _is_prefill(cache) -> bool:
    return cache is None or not hasattr(cache, "get_seq_length") or cache.get_seq_length() == 0


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)  # torch.compiler.is_compiling is 2.3+
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()


def _cache_kwarg_name(language_model: nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(language_model.forward).parameters else "past_key_values"


class TinyVLMForConditionalGeneration(TinyVLMPreTrainedModel, GenerationMixin):
    def __init__(self, config: TinyVLMConfig):
        super().__init__(config)
        self.vision_tower = _build_vision_tower(config.vision_config)
        self.multi_modal_projector = TinyVLMMultiModalProjector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self._cache_kwarg = _cache_kwarg_name(self.language_model)
        self.labelled_logits_only = False
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.language_model.set_output_embeddings(new_embeddings)

    def get_decoder(self):
        return self.language_model.get_decoder()

    def set_decoder(self, decoder):
        self.language_model.set_decoder(decoder)

    def enable_input_require_grads(self):
        """Make both embeddings' outputs require grad: checkpointing or adapters over frozen weights
        need it for gradients to reach the trainable parts after them. A frozen vision tower is still
        left out of autograd: `get_image_features` runs it under no_grad (5.x's stock hook alone
        would make SigLIP's patch embeddings require grad and so back-propagate the whole tower)."""

        def hook(module, args, output):
            output.requires_grad_(True)

        self.disable_input_require_grads()
        self._require_grads_hooks = [
            self.get_input_embeddings().register_forward_hook(hook),
            self.vision_tower.embeddings.register_forward_hook(hook),
        ]
        self._require_grads_hook = self._require_grads_hooks[0]  # the name 4.x and PEFT remove

    if not hasattr(PreTrainedModel, "activation_checkpointing_enable"):  # transformers before 5.23

        def gradient_checkpointing_enable(self, *args, **kwargs):
            super().gradient_checkpointing_enable(*args, **kwargs)
            # 5.x sets the input-grad hooks for every model that takes input_ids, 4.x only under PEFT:
            # without them reentrant checkpointing gives nothing after a frozen embedding a gradient.
            # Setting them again (5.0-5.22) only replaces the hooks with the same ones.
            self.enable_input_require_grads()

    def disable_input_require_grads(self):
        for hook in getattr(self, "_require_grads_hooks", []):
            hook.remove()
        self._require_grads_hooks = []
        if hasattr(self, "_require_grads_hook"):
            del self._require_grads_hook

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        vision = self.config.vision_config
        expected = (vision.num_channels, vision.image_size, vision.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}, expected (num_images, {expected[0]}, "
                f"{expected[1]}, {expected[2]}): resize images with the processor's image processor"
            )

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image features `(num_images, image_seq_length, text_hidden)`."""
        self._check_pixel_values(pixel_values)
        tower = self.vision_tower
        # A frozen tower fed plain pixels cannot produce anything that needs grad, so autograd (and
        # gradient checkpointing, which would still wrap its layers) is switched off there.
        needs_grad = pixel_values.requires_grad or any(p.requires_grad for p in tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and needs_grad):
            hidden_states = tower.embeddings(pixel_values)  # (num_images, num_patches, vision_hidden)
            for layer in tower.encoder.layers[: self.config.num_vision_layers_used]:
                hidden_states = layer(hidden_states, None)
        return self.multi_modal_projector(hidden_states)  # (num_images, image_seq_length, text_hidden)

    def _image_token_mask(self, input_ids, inputs_embeds) -> torch.Tensor:
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embed = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_embed).all(-1)

    def _merge_image_features(self, mask, inputs_embeds, image_features) -> torch.Tensor:
        num_tokens = int(mask.sum())
        num_images, per_image = image_features.shape[:2]
        if num_tokens != num_images * per_image:
            raise ValueError(
                f"Image tokens and images do not match: input_ids hold {num_tokens} image tokens but "
                f"{num_images} image(s) x {per_image} tokens = {num_images * per_image} were given; each "
                "<image> must be expanded to image_seq_length tokens (the processor does this)"
            )
        image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), image_features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """input_ids `(batch, seq)` with `image_seq_length` `<image>` tokens per image; pixel_values
        `(num_images, 3, H, W)`, images in the order their tokens appear, row by row."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        cache = kwargs.pop("cache", None)
        cache = past_key_values if cache is None else cache
        if labels is not None and use_cache is None:
            # Training needs no KV cache; without one, transformers also reads packed (padding-free)
            # sequences from position_ids instead of treating them as one long row.
            use_cache = False
        return_dict = kwargs.pop("return_dict", None)

        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (batch, seq, text_hidden)
        image_features = None
        if pixel_values is not None:
            image_features = self.get_image_features(pixel_values)
            mask = self._image_token_mask(input_ids, inputs_embeds)
            inputs_embeds = self._merge_image_features(mask, inputs_embeds, image_features)
        elif (
            input_ids is not None
            and not _is_compiling()
            and _is_prefill(cache)
            and (input_ids == self.config.image_token_id).any()
        ):
            # After the prefill a sampled <image> token is just a token; the check is for user input.
            # It reads tensor values, so the compiled decode step of generate() (static cache) skips it
            # rather than break the graph: generate() runs the prefill uncompiled.
            raise ValueError(
                f"input_ids hold {int((input_ids == self.config.image_token_id).sum())} image tokens "
                "but no pixel_values were given"
            )

        if labels is not None and self.training and self.labelled_logits_only and cache is None:
            if self.config.text_config.model_type not in LABELLED_LOGITS_MODEL_TYPES:
                raise ValueError(
                    f"labelled_logits_only supports language models of type {sorted(LABELLED_LOGITS_MODEL_TYPES)}, "
                    f"not {self.config.text_config.model_type!r}: set model.labelled_logits_only = False"
                )
            loss = self._labelled_loss(inputs_embeds, attention_mask, position_ids, labels, use_cache, kwargs)
            output = TinyVLMCausalLMOutputWithPast(loss=loss, image_hidden_states=image_features)
            return output.to_tuple() if return_dict is False else output

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            return_dict=True,
            **{self._cache_kwarg: cache},
            **kwargs,
        )
        output = TinyVLMCausalLMOutputWithPast(**outputs, image_hidden_states=image_features)
        return output.to_tuple() if return_dict is False else output

    def _labelled_loss(self, inputs_embeds, attention_mask, position_ids, labels, use_cache, kwargs):
        """The causal-LM loss from lm_head at labelled positions only: the same value and gradients as
        the language model's own loss (shifted labels, fp32 cross-entropy, mean over labelled tokens
        or sum / `num_items_in_batch` when the Trainer passes it)."""
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        hidden = self.language_model.get_decoder()(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **kwargs,
        ).last_hidden_state  # (batch, seq, text_hidden)
        if shift_labels is None:  # position t predicts the label of t + 1
            shift_labels = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
        shift_labels = shift_labels.to(hidden.device)
        keep = shift_labels != IGNORE_INDEX  # (batch, seq)
        logits = self.get_output_embeddings()(hidden[keep]).float()  # (labelled, vocab)
        if num_items_in_batch is None:
            return nn.functional.cross_entropy(logits, shift_labels[keep])
        loss = nn.functional.cross_entropy(logits, shift_labels[keep], reduction="sum")
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        return loss / num_items_in_batch

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, **kwargs):
        cache_position = kwargs.get("cache_position")
        model_inputs = super().prepare_inputs_for_generation(input_ids, pixel_values=pixel_values, **kwargs)
        # 4.x forwards every kwarg on every step; after the prefill the image lives in the KV cache, so
        # the vision tower runs once per generate(). (5.x drops pixel_values after the prefill itself.)
        if cache_position is not None and cache_position[0] != 0:
            model_inputs.pop("pixel_values", None)
        return model_inputs


__all__ = ["TinyVLMPreTrainedModel", "TinyVLMForConditionalGeneration", "TinyVLMMultiModalProjector"]
