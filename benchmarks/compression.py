"""Image-token compression: prefill time at 729 image tokens against 196 / 81 (k = 2 / 3), side by side.

One model is built; the compressed variants share its vision tower and language model and differ only
in the projector, so the measured difference is the token count. Runs alternate between variants and
the median of the repeats is reported. Two timings per variant:
  - language model prefill: `language_model(inputs_embeds)` on (prompt + image tokens)
  - end-to-end prefill: `model(input_ids, pixel_values)` (vision tower included; it does not shrink)

    python benchmarks/compression.py --quick                # tiny config, seconds
    python benchmarks/compression.py --json out.json        # the real tinyllama-siglip preset, fp32
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys

import torch
from tinyvlm.conversion.build import build_preset_model
from tinyvlm.modeling_tinyvlm import TinyVLMConfig
from tinyvlm.modeling_tinyvlm.modeling_tinyvlm import TinyVLMMultiModalProjector

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `common` next to this script
from common import timed  # noqa: E402

PROMPT = "<|user|>\n<image>\nWhat shape is in the top left corner of the picture?</s>\n<|assistant|>\n"


def variant(model, factor: int, mode: str):
    """A view of `model` with a k x k projector; vision tower and LLM are shared, not copied."""
    if factor == 1:
        return model
    config = TinyVLMConfig(
        **{**model.config.to_dict(), "projector_downsample_factor": factor, "projector_downsample_mode": mode}
    )
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view._modules["multi_modal_projector"] = TinyVLMMultiModalProjector(config).to(model.dtype)
    view.config = config
    return view


def cases(model, processor):
    """name -> (lm_prefill, e2e_prefill) callables for one image + prompt."""
    size = model.config.vision_config.image_size
    pixel_values = torch.randn(1, 3, size, size, dtype=model.dtype)
    text = PROMPT.replace("<image>", "<image>" * model.config.image_seq_length)
    input_ids = processor.tokenizer([text], return_tensors="pt").input_ids
    embeds = torch.randn(1, input_ids.shape[1], model.config.text_config.hidden_size, dtype=model.dtype)
    lm = lambda: model.language_model(inputs_embeds=embeds, logits_to_keep=1)  # noqa: E731
    e2e = lambda: model(input_ids=input_ids, pixel_values=pixel_values, logits_to_keep=1)  # noqa: E731
    return input_ids.shape[1], lm, e2e


@torch.inference_mode()  # prefill only: no autograd bookkeeping in what is timed
def run(args) -> dict:
    preset = "tiny" if args.quick else "tinyllama-siglip"
    overrides = (
        {"vision": {"image_size": 96, "num_hidden_layers": 4}, "text": {"num_hidden_layers": 4}}
        if args.quick
        else {}
    )
    dtype = getattr(torch, args.dtype)
    model, processor = build_preset_model(preset, dtype=dtype, **overrides)
    variants = {f"k={k}": variant(model, k, args.mode) for k in (1, 2, 3)}
    setups = {name: cases(m, processor) for name, m in variants.items()}
    times = {name: {"lm": [], "e2e": []} for name in variants}
    for _name, (_, lm, e2e) in setups.items():  # warm-up
        timed(lm), timed(e2e)
    for _ in range(args.repeats):
        for name, (_, lm, e2e) in setups.items():  # alternate the variants within each repeat
            times[name]["lm"].append(timed(lm))
            times[name]["e2e"].append(timed(e2e))
    medians = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    base = medians["k=1"]
    result = {
        "preset": preset,
        "dtype": args.dtype,
        "mode": args.mode,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "tokens": {n: variants[n].config.image_seq_length for n in variants},
        "sequence_lengths": {n: s[0] for n, s in setups.items()},
        "median_seconds": medians,
        "ratios": {
            n: {"lm_prefill_speedup": base["lm"] / m["lm"], "e2e_prefill_speedup": base["e2e"] / m["e2e"]}
            for n, m in medians.items()
        },
    }
    return result


def print_table(result: dict) -> None:
    print(
        f"preset {result['preset']} {result['dtype']} {result['mode']}, {result['threads']} threads, median of repeats"
    )
    print(
        f"{'variant':8} {'img tok':>8} {'seq':>6} {'LM prefill s':>13} {'x faster':>9} {'e2e s':>9} {'x faster':>9}"
    )
    for name, m in result["median_seconds"].items():
        r = result["ratios"][name]
        print(
            f"{name:8} {result['tokens'][name]:8d} {result['sequence_lengths'][name]:6d} {m['lm']:13.4f} "
            f"{r['lm_prefill_speedup']:9.2f} {m['e2e']:9.4f} {r['e2e_prefill_speedup']:9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny config, finishes in seconds")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--mode", choices=["pixel_shuffle", "avg_pool"], default="pixel_shuffle")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the result (ratios under 'ratios') to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = run(args)
    print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
