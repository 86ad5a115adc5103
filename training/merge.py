"""`tinyvlm merge ADAPTER --output DIR`: a phase 3 LoRA adapter + its base -> a standalone tinyvlm folder.

The base is the adapter's `base_model_name_or_path` (written by `tinyvlm train --phase lora`), or
`--base`. The adapter's trained projector (`modules_to_save`) replaces the base's; LoRA deltas are
folded into the LLM's weights, so the result needs neither PEFT nor the base to load. The base is
always loaded unquantised: merging into 4-bit weights would round the LoRA deltas away.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from transformers.utils import logging

from ..conversion.utils import atomic_dir, save_model_folder
from ..modeling_tinyvlm import TinyVLMForConditionalGeneration, TinyVLMProcessor
from .train import TRAINING_RECORD

logger = logging.get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def adapter_base(adapter_dir: str, base: str | None = None) -> str:
    """The base model path: `base` if given, else the adapter config's `base_model_name_or_path`."""
    config_path = os.path.join(adapter_dir, "adapter_config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{adapter_dir} is not a PEFT adapter folder: no adapter_config.json")
    if base is None:
        with open(config_path, encoding="utf-8") as f:
            base = json.load(f).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{config_path} has no base_model_name_or_path: pass --base")
        if not os.path.isdir(base) and (os.path.isabs(base) or base.startswith(".")):
            raise FileNotFoundError(
                f"base model {base} (base_model_name_or_path in {config_path}) does not exist: pass --base"
            )
    return base


def load_merged(adapter_dir: str, base: str | None = None) -> TinyVLMForConditionalGeneration:
    """The base with the adapter folded in (eval mode)."""
    from peft import PeftModel

    model = TinyVLMForConditionalGeneration.from_pretrained(adapter_base(adapter_dir, base))
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval()


def merge_adapter(
    adapter_dir: str,
    output_dir: str,
    base: str | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> str:
    """Write the merged model, the processor and the training record to `output_dir`, atomically."""
    base = adapter_base(adapter_dir, base)
    model = load_merged(adapter_dir, base).to(DTYPES[dtype])
    # The adapter folder carries the processor (the Trainer saves it into every checkpoint).
    has_processor = os.path.isfile(os.path.join(adapter_dir, "tokenizer_config.json"))
    processor = TinyVLMProcessor.from_pretrained(adapter_dir if has_processor else base)
    record = _merged_record(adapter_dir, base)
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        save_model_folder(model, processor, tmp)
        if record is not None:
            with open(os.path.join(tmp, TRAINING_RECORD), "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)
                f.write("\n")
    logger.info("merged %s into %s -> %s", adapter_dir, base, output_dir)
    return output_dir


def _merged_record(adapter_dir: str, base: str) -> dict | None:
    # The phase 3 record travels with the merged folder, for the model card.
    path = os.path.join(adapter_dir, TRAINING_RECORD)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    record["merged"] = {"adapter": os.path.abspath(adapter_dir), "base": base}
    return record


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyvlm merge",
        description="Merge a LoRA adapter (tinyvlm train --phase lora) into its base: a standalone tinyvlm folder.",
        epilog="example:\n  tinyvlm merge out/phase3 --output tinyvlm-chat\n"
        "  tinyvlm merge out/phase3 --base out/phase2 --output tinyvlm-chat --dtype bfloat16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("adapter", help="the adapter folder (phase 3 output or one of its checkpoints)")
    parser.add_argument("--output", required=True, help="folder to write (atomically)")
    parser.add_argument(
        "--base", help="base tinyvlm folder (default: base_model_name_or_path of the adapter)"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    merge_adapter(args.adapter, args.output, base=args.base, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
