"""`tinyvlm build`: a tinyvlm folder from a random-init preset or from SigLIP + LLM checkpoints.

Presets (offline, random init, no download):
- `tiny`: a few-layer SigLIP + Llama with a locally built tokenizer, for tests and demos.
- `tinyllama-siglip`: the exact published architectures, SigLIP so400m-patch14-384 (27 layers, hidden
  1152, MLP 4304, 16 heads, 729 patches) and TinyLlama-1.1B (22 layers, hidden 2048, 32 heads, 4 KV
  heads, MLP 5632, vocab 32000 + `<image>` + `<pad>`, RoPE theta 10000, 2048 positions).
SigLIP's attention-pooling head is left out of both: a LLaVA-style model reads a hidden state of the
encoder and never runs the head.
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import torch
from transformers import GenerationConfig, SiglipImageProcessor
from transformers.utils import logging

from ..modeling_tinyvlm import TinyVLMConfig, TinyVLMForConditionalGeneration, TinyVLMProcessor
from .from_checkpoints import add_arguments, build_from_args
from .tokenizer import add_vlm_tokens, build_offline_tokenizer
from .utils import atomic_dir, save_model_folder

logger = logging.get_logger(__name__)

PRESETS: dict[str, dict] = {
    "tiny": {
        "vision": {
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "vision_use_head": False,
        },
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
        },
        "tokenizer": {"vocab_size": 1024},
    },
    "tinyllama-siglip": {
        "vision": {
            "image_size": 384,
            "patch_size": 14,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6,
            "vision_use_head": False,
        },
        "text": {
            "hidden_size": 2048,
            "intermediate_size": 5632,
            "num_hidden_layers": 22,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "max_position_embeddings": 2048,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
        },
        "tokenizer": {"vocab_size": 1024, "pad_vocab_to": 32000},
    },
}


def siglip_image_processor(image_size: int) -> SiglipImageProcessor:
    """SigLIP's published preprocessing: bicubic resize to a square, rescale 1/255, mean = std = 0.5."""
    return SiglipImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def generation_config_for(tokenizer) -> GenerationConfig:
    """Greedy by default; the `<image>` and pad tokens are never generated (an `<image>` in an answer
    would be taken for a placeholder when the text is fed back)."""
    never = [tokenizer.convert_tokens_to_ids("<image>"), tokenizer.pad_token_id]
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=sorted({t for t in never if t is not None}),
        do_sample=False,
        max_new_tokens=64,
    )


def preset_components(name: str, vision: dict | None = None, text: dict | None = None, **config_kwargs):
    """(config, processor) for a preset; `vision`/`text` override entries of the preset's sub-configs."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    preset = copy.deepcopy(PRESETS[name])
    preset["vision"].update(vision or {})
    preset["text"].update(text or {})
    tokenizer = build_offline_tokenizer(**preset["tokenizer"])
    add_vlm_tokens(tokenizer)
    text_config = {
        "model_type": "llama",
        **preset["text"],
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = TinyVLMConfig(
        vision_config={"model_type": "siglip_vision_model", **preset["vision"]},
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        **config_kwargs,
    )
    processor = TinyVLMProcessor(
        image_processor=siglip_image_processor(config.vision_config.image_size),
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
    )
    return config, processor


def build_preset_model(
    name: str, seed: int = 0, dtype: torch.dtype = torch.float32, device: str | None = None, **overrides
):
    """(model, processor) at random init, deterministic for a seed (and device). `device`: where the
    weights are created (the real preset's 1.5B parameters initialise much faster on a GPU)."""
    config, processor = preset_components(name, **overrides)
    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = TinyVLMForConditionalGeneration(config).to(dtype)
    model.generation_config = generation_config_for(processor.tokenizer)
    return model.eval(), processor


def build_preset(
    name: str, output_dir, seed: int = 0, dtype: torch.dtype = torch.float32, overwrite=False, **overrides
):
    """Write a random-init preset folder (weights, config, code files, processor); returns its path."""
    model, processor = build_preset_model(name, seed=seed, dtype=dtype, **overrides)
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        save_model_folder(model, processor, tmp)
    return output_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyvlm build",
        description="Build a tinyvlm folder: a random-init preset (offline) or SigLIP + LLM checkpoints.",
        epilog="examples:\n  tinyvlm build --preset tiny --output tiny-vlm\n"
        "  tinyvlm build --vision google/siglip-so400m-patch14-384 "
        "--llm TinyLlama/TinyLlama-1.1B-Chat-v1.0 --projector ported.safetensors --output tinyvlm-init",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", required=True, help="folder to write (atomically)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="random-init architecture, no download")
    parser.add_argument("--seed", type=int, default=0, help="random init seed (preset, or a fresh projector)")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="auto: float32 for a preset; the checkpoints' own dtype (the widest if they differ) otherwise",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_arguments(parser)
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.preset:
        if args.vision or args.llm or args.projector:
            raise ValueError("pass either --preset or --vision/--llm, not both")
        dtype = torch.float32 if args.dtype == "auto" else getattr(torch, args.dtype)
        build_preset(args.preset, args.output, seed=args.seed, dtype=dtype, overwrite=args.overwrite)
    else:
        if not (args.vision and args.llm):
            raise ValueError("pass --preset NAME, or both --vision and --llm")
        build_from_args(args)
    print(f"wrote {args.output}")
    return 0
