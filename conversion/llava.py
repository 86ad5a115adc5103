"""`tinyvlm import-llava` / `export-llava`: lossless conversion to and from transformers' Llava.

Llava with a SigLIP vision tower, a Llama text model, projector width = LLM width and
`vision_feature_select_strategy="full"` is the same network as tinyvlm, so conversion is a key rename.
It anchors our correctness (same logits as transformers' own Llava) and lets engines that know Llava
serve a tinyvlm model.

Key layouts Llava has used (all read on import):
    on disk, every version     vision_tower.*, multi_modal_projector.*, language_model.model.*,
                               language_model.lm_head.*
    in memory, >= 4.52         model.vision_tower.*, model.multi_modal_projector.*,
                               model.language_model.*, lm_head.*
and SigLIP inside either with (4.x) or without (5.x) the `vision_model.` level. Export writes the on-disk
layout with the 4.x SigLIP level, which 4.57 loads natively and 5.x through its conversion mapping.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.utils import logging

from ..modeling_tinyvlm import TinyVLMConfig, TinyVLMForConditionalGeneration, TinyVLMProcessor
from .from_checkpoints import CheckpointReader
from .utils import atomic_dir, save_model_folder

logger = logging.get_logger(__name__)

# (pattern, replacement) applied in order; Llava key -> tinyvlm key
IMPORT_RULES = [
    (r"^model\.(vision_tower|multi_modal_projector)\.", r"\1."),
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^vision_tower\.vision_model\.", "vision_tower."),
]
# tinyvlm key -> Llava on-disk key (4.x SigLIP level)
EXPORT_RULES = [(r"^vision_tower\.", "vision_tower.vision_model.")]


def rename_keys(state_dict: dict, rules) -> dict:
    renamed = {}
    for key, tensor in state_dict.items():
        new = key
        for pattern, replacement in rules:
            new = re.sub(pattern, replacement, new)
        if new in renamed:
            raise ValueError(f"two source keys map to {new!r} (second: {key!r})")
        renamed[new] = tensor
    return renamed


def llava_config_to_tinyvlm(llava: dict, source: str = "config.json") -> TinyVLMConfig:
    """A tinyvlm config from a Llava config dict; refuses what tinyvlm cannot express."""
    vision, text = llava.get("vision_config") or {}, llava.get("text_config") or {}
    if vision.get("model_type") != "siglip_vision_model":
        raise ValueError(
            f"{source}: vision_config.model_type is {vision.get('model_type')!r}, expected siglip_vision_model"
        )
    strategy = llava.get("vision_feature_select_strategy", "default")
    if strategy != "full":
        raise ValueError(
            f"{source}: vision_feature_select_strategy={strategy!r} drops the first patch as if it were a CLS "
            "token (SigLIP has none); tinyvlm keeps every patch and only converts 'full'"
        )
    if not llava.get("multimodal_projector_bias", True):
        raise ValueError(
            f"{source}: multimodal_projector_bias=false is not supported (tinyvlm's projector has biases)"
        )
    layer = llava.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise ValueError(f"{source}: vision_feature_layer={layer!r}; tinyvlm takes one layer, not a list")
    image_token_id = llava.get("image_token_id", llava.get("image_token_index"))
    config = TinyVLMConfig(
        vision_config=vision,
        text_config=text,
        projector_hidden_size=None,
        projector_hidden_act=llava.get("projector_hidden_act", "gelu"),
        vision_feature_layer=layer,
        image_token_id=image_token_id,
        tie_word_embeddings=text.get("tie_word_embeddings", llava.get("tie_word_embeddings", False)),
    )
    stated = llava.get("image_seq_length")
    if stated is not None and stated != config.image_seq_length:
        raise ValueError(
            f"{source}: image_seq_length={stated} but the vision tower gives {config.image_seq_length}"
        )
    return config


def tinyvlm_config_to_llava(config: TinyVLMConfig) -> dict:
    if config.projector_downsample_factor != 1:
        raise ValueError(
            f"projector_downsample_factor={config.projector_downsample_factor} merges image patches before the "
            "projector; Llava has no such step (one token per patch), so this model cannot be exported to Llava"
        )
    if config.projector_hidden_size != config.text_config.hidden_size:
        raise ValueError(
            f"projector_hidden_size={config.projector_hidden_size} differs from the LLM width "
            f"{config.text_config.hidden_size}; Llava's projector cannot express that (linear_1 maps to the LLM width)"
        )
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "vision_config": config.vision_config.to_dict(),
        "text_config": config.text_config.to_dict(),
        "image_token_index": config.image_token_id,
        "image_seq_length": config.image_seq_length,
        "projector_hidden_act": config.projector_hidden_act,
        "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": "full",
        "multimodal_projector_bias": True,
        "tie_word_embeddings": config.tie_word_embeddings,
    }


def _load_strict(model, state: dict, source) -> None:
    expected = set(model.state_dict())
    if model.config.tie_word_embeddings:
        state.setdefault(
            "language_model.lm_head.weight", state.get("language_model.model.embed_tokens.weight")
        )
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: keys do not match tinyvlm; missing: {missing[:20]}, unexpected: {unexpected[:20]}"
        )
    for key, tensor in model.state_dict().items():
        if tensor.shape != state[key].shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=True)


def _processor_from(folder: Path, config: TinyVLMConfig):
    if not (folder / "tokenizer_config.json").exists():
        logger.warning(
            "%s has no tokenizer: writing the model only; add a processor before generating", folder
        )
        return None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat_template = getattr(tokenizer, "chat_template", None)
    template_file = folder / "chat_template.jinja"
    if template_file.exists():
        chat_template = template_file.read_text()
    return TinyVLMProcessor(
        image_processor=AutoImageProcessor.from_pretrained(folder),
        tokenizer=tokenizer,
        chat_template=chat_template,
        image_seq_length=config.image_seq_length,
    )


def import_llava(src, dst, overwrite: bool = False) -> Path:
    src, dst = Path(src), Path(dst)
    config_file = src / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} not found")
    llava = json.loads(config_file.read_text())
    if llava.get("model_type") != "llava":
        raise ValueError(f"{config_file}: model_type is {llava.get('model_type')!r}, expected 'llava'")
    config = llava_config_to_tinyvlm(llava, str(config_file))
    state = rename_keys(dict(CheckpointReader(src)), IMPORT_RULES)
    dtype = next(iter(state.values())).dtype
    model = TinyVLMForConditionalGeneration(config)
    _load_strict(model, state, src)
    model = model.to(dtype)
    processor = _processor_from(src, config)
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        if processor is None:
            model.save_pretrained(tmp)
        else:
            save_model_folder(model, processor, tmp)
    return dst


def export_llava(src, dst, overwrite: bool = False) -> Path:
    src, dst = Path(src), Path(dst)
    config = TinyVLMConfig.from_pretrained(src)
    llava_config = tinyvlm_config_to_llava(config)
    state = rename_keys(dict(CheckpointReader(src)), EXPORT_RULES)
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(llava_config, indent=2) + "\n")
        save_file(
            {k: v.contiguous() for k, v in state.items()},
            tmp / "model.safetensors",
            metadata={"format": "pt"},
        )
        _copy_processor_files(src, tmp, config)
    return dst


def _copy_processor_files(src: Path, dst: Path, config: TinyVLMConfig) -> None:
    """Tokenizer, image processor and chat template, pointed at LlavaProcessor instead of our code."""
    for name in (
        "generation_config.json",
        "tokenizer.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "chat_template.jinja",
    ):
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        if (src / name).exists():
            data = json.loads((src / name).read_text())
            data.pop("auto_map", None)
            if "processor_class" in data:
                data["processor_class"] = "LlavaProcessor"
            (dst / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if (src / "tokenizer_config.json").exists():
        processor = {
            "processor_class": "LlavaProcessor",
            "image_token": "<image>",
            "patch_size": config.vision_config.patch_size,
            "vision_feature_select_strategy": "full",
            "num_additional_image_tokens": 0,
        }
        (dst / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def _parser(prog: str, description: str, example: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="source folder")
    parser.add_argument("dst", help="folder to write (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


def main_import_llava(argv: list[str]) -> int:
    args = _parser(
        "tinyvlm import-llava",
        "Convert a transformers LlavaForConditionalGeneration folder (SigLIP + Llama, strategy 'full') to tinyvlm.",
        "tinyvlm import-llava my-llava-siglip-tinyllama tinyvlm-model",
    ).parse_args(argv)
    import_llava(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote {args.dst}")
    return 0


def main_export_llava(argv: list[str]) -> int:
    args = _parser(
        "tinyvlm export-llava",
        "Convert a tinyvlm folder to a transformers LlavaForConditionalGeneration folder.",
        "tinyvlm export-llava tinyvlm-model llava-model",
    ).parse_args(argv)
    export_llava(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote {args.dst}")
    return 0
