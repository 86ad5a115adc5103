"""`tinyvlm ask`: one answer about one image from the command line, streamed as it is generated."""

from __future__ import annotations

import argparse
import os

import torch


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyvlm ask",
        description="Answer a question about an image with a tinyvlm model (local folder or Hub id).",
        epilog='example:\n  tinyvlm ask --model demo_out/final --image cat.png "What colour is the cat?"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("question")
    parser.add_argument("--model", required=True, help="tinyvlm folder or Hub id")
    parser.add_argument("--image", help="image file (omit for a text-only question)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attn_implementation", default=None, help="eager, sdpa or flash_attention_2")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, TextStreamer

    if args.image and not os.path.isfile(args.image):
        raise FileNotFoundError(f"image file {args.image} not found")
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForImageTextToText.from_pretrained(
        args.model, trust_remote_code=True, dtype=dtype, attn_implementation=args.attn_implementation
    ).to(args.device)
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    content = ([{"type": "image"}] if args.image else []) + [{"type": "text", "text": args.question}]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    images = [Image.open(args.image).convert("RGB")] if args.image else None
    inputs = processor(images=images, text=[prompt], return_tensors="pt").to(args.device)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, streamer=streamer)
    print(flush=True)
    return 0
