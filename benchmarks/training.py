"""Phase 3 (LoRA) step throughput: padded batches (stock collator) vs padding-free (packed) batches.

The rows follow a LLaVA-665k-like length mix: most are one image + a short question + a one-word
answer, some are longer conversations, a few are long multi-turn ones. Both sides train the same
LoRA model on the same rows in the same order; steps alternate between the sides and the median of
the per-pass rates is reported. Peak memory is measured per side in a fresh subprocess (VmHWM).
The loss equality (packed == padded, fp32) is checked in the same run on the first batch.

    python benchmarks/training.py --quick             # seconds
    python benchmarks/training.py --json out.json     # more steps, a wider model
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

import torch
from tinyvlm.conversion.build import build_preset_model
from tinyvlm.training.data import DataCollatorForVLM
from tinyvlm.training.packing import DataCollatorForVLMPadFree, length_grouped_indices

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `common` next to this script
from common import proc_status_bytes  # noqa: E402

# (share of rows, text tokens range): LLaVA-665k is mostly short VQA answers, with a tail of long
# multi-turn conversations (LLaVA-Instruct) and a few text-only rows.
LENGTH_MIX = [
    (0.70, (24, 60), True),
    (0.18, (120, 260), True),
    (0.07, (500, 900), True),
    (0.05, (40, 200), False),
]


def _pick_length(rng: random.Random):
    share = rng.random()
    for weight, span, has_image in LENGTH_MIX:
        share -= weight
        if share <= 0:
            return span, has_image
    return LENGTH_MIX[-1][1:]


def make_rows(n: int, image_tokens: int, image_token_id: int, vocab: int, image_size: int, seed: int = 0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        (lo, hi), has_image = _pick_length(rng)
        text = [rng.randrange(3, vocab - 2) for _ in range(rng.randint(lo, hi))]
        ids = [1] + ([image_token_id] * image_tokens if has_image else []) + text
        answer_start = len(ids) - max(2, len(text) // 4)
        labels = [-100] * answer_start + ids[answer_start:]
        pixel_values = torch.randn(1, 3, image_size, image_size) if has_image else None
        rows.append({"input_ids": ids, "labels": labels, "pixel_values": pixel_values})
    return rows


def lora_model(args):
    from peft import LoraConfig, get_peft_model

    overrides = {
        "vision": {"image_size": 64, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2},
        "text": {
            "hidden_size": args.hidden,
            "intermediate_size": args.hidden * 3,
            "num_hidden_layers": args.layers,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
        },
    }
    model, processor = build_preset_model("tiny", seed=0, **overrides)
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=r".*language_model.*\.(q_proj|v_proj)",
        modules_to_save=["multi_modal_projector"],
    )
    model = get_peft_model(model, config)
    model.train()
    return model, processor


def batches(rows, batch_size, order):
    return [
        [rows[i] for i in order[s : s + batch_size]]
        for s in range(0, len(order) - batch_size + 1, batch_size)
    ]


def step(model, optimizer, batch) -> None:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def setup(args):
    torch.manual_seed(0)
    model, processor = lora_model(args)
    cfg = model.base_model.model.config
    rows = make_rows(
        args.rows,
        cfg.image_seq_length,
        cfg.image_token_id,
        cfg.text_config.vocab_size - 2,
        cfg.vision_config.image_size,
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    collators = {
        "padded": DataCollatorForVLM(pad_token_id=processor.tokenizer.pad_token_id),
        "padded+grouped": DataCollatorForVLM(pad_token_id=processor.tokenizer.pad_token_id),
        "padding-free": DataCollatorForVLMPadFree(),
    }
    lengths = [len(r["input_ids"]) for r in rows]
    orders = {
        "padded": random.Random(1).sample(range(len(rows)), len(rows)),
        "padded+grouped": length_grouped_indices(lengths, args.batch_size, seed=1, mega_batch_mult=8),
    }
    orders["padding-free"] = orders["padded"]
    return model, optimizer, rows, collators, orders


def check_loss_equality(model, rows, collators, batch_size) -> float:
    first = rows[:batch_size]
    model.eval()
    with torch.no_grad():
        padded = model(**collators["padded"](first)).loss
        packed = model(**collators["padding-free"](first)).loss
    model.train()
    return abs(padded.item() - packed.item())


def measure_memory(side: str, args) -> float:
    """Peak RSS (MiB) of a fresh process running `--steps` steps of one side, minus its baseline."""
    cmd = [
        sys.executable,
        __file__,
        "--_memory",
        side,
        "--rows",
        str(args.rows),
        "--batch_size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--hidden",
        str(args.hidden),
        "--layers",
        str(args.layers),
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    )
    return float(out.stdout.strip().splitlines()[-1])


def _vm_hwm_mib() -> float:
    return proc_status_bytes("VmHWM") / 2**20


def memory_child(side: str, args) -> None:
    model, optimizer, rows, collators, orders = setup(args)
    step(model, optimizer, collators[side]([rows[0]]))  # allocate optimizer state before the baseline
    base = _vm_hwm_mib()
    for batch in batches(rows, args.batch_size, orders[side])[: args.steps]:
        step(model, optimizer, collators[side](batch))
    print(_vm_hwm_mib() - base)


def run(args) -> dict:
    model, optimizer, rows, collators, orders = setup(args)
    loss_diff = check_loss_equality(model, rows, collators, args.batch_size)
    sides = list(collators)
    plans = {side: batches(rows, args.batch_size, orders[side]) for side in sides}
    for side in sides:  # warm-up
        step(model, optimizer, collators[side](plans[side][0]))
    # Every side trains on the same rows each repeat (one pass over them); grouping only changes which
    # rows share a batch, so samples/s over a whole pass is comparable across sides.
    rates = {side: {"samples_per_s": [], "tokens_per_s": []} for side in sides}
    for _ in range(args.repeats):
        totals = {side: [0.0, 0, 0] for side in sides}  # seconds, samples, tokens
        for i in range(len(plans["padded"])):
            for side in sides:  # alternate so drift in machine load hits every side alike
                rows_i = plans[side][i]
                batch = collators[side](rows_i)
                start = time.perf_counter()
                step(model, optimizer, batch)
                totals[side][0] += time.perf_counter() - start
                totals[side][1] += len(rows_i)
                totals[side][2] += sum(len(r["input_ids"]) for r in rows_i)
        for side, (seconds, samples, tokens) in totals.items():
            rates[side]["samples_per_s"].append(samples / seconds)
            rates[side]["tokens_per_s"].append(tokens / seconds)
    medians = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in rates.items()}
    memory = {side: measure_memory(side, args) for side in sides} if not args.no_memory else {}
    base = medians["padded"]["samples_per_s"]
    ratios = {s: {"samples_per_s": m["samples_per_s"] / base} for s, m in medians.items()}
    for side in memory:
        ratios[side]["peak_memory"] = memory[side] / memory["padded"]
    return {
        "loss_abs_diff_packed_vs_padded": loss_diff,
        "medians": medians,
        "peak_memory_mib": memory,
        "ratios": ratios,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "rows": args.rows,
        "repeats": args.repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few steps, small model")
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the rows; the median is reported")
    parser.add_argument("--steps", type=int, default=8, help="steps of the memory subprocesses")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--no_memory", action="store_true", help="skip the per-side memory subprocesses")
    parser.add_argument("--json")
    parser.add_argument("--_memory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.steps, args.hidden, args.layers, args.repeats = 48, 4, 128, 2, 3
    if args._memory:
        memory_child(args._memory, args)
        return
    result = run(args)
    print(f"loss |packed - padded| on the first batch (fp32): {result['loss_abs_diff_packed_vs_padded']:.2e}")
    assert result["loss_abs_diff_packed_vs_padded"] < 1e-5, "packed loss must equal padded loss"
    print(f"{'side':16} {'samples/s':>10} {'tokens/s':>10} {'x padded':>9} {'peak MiB':>9}")
    for side, m in result["medians"].items():
        mem = result["peak_memory_mib"].get(side, float("nan"))
        print(
            f"{side:16} {m['samples_per_s']:10.2f} {m['tokens_per_s']:10.0f} "
            f"{result['ratios'][side]['samples_per_s']:9.2f} {mem:9.0f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
