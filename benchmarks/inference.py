"""Inference, side by side: tinyvlm vs transformers' LlavaForConditionalGeneration on the same weights.

A preset is built at random init and saved, `export_llava` writes the Llava folder with the same
weights, and both folders are loaded with the same dtype and attention implementation. Before any
timing the script checks that both sides compute the same thing (full-sequence logits within 1e-5 in
fp32, identical greedy tokens) and prints the result.

Measured, tinyvlm / Llava as ratios (below 1.0: tinyvlm is faster or smaller):
- prefill: time to the first token of `generate` for one image + prompt (batch 1),
- vision: `get_image_features` alone (vision tower + projector), batch 1,
- decode: time per generated token after the first (batch 1),
- batch B: wall time of `generate` for B requests (one image + prompt each) -> throughput,
- peak memory: in a fresh process per side, the resident high-water mark (VmHWM) during one
  `generate`, minus the process's RSS after importing torch/transformers. Weights are memory-mapped
  from safetensors and count once paged in (rows of the embedding that are never read never are).
Timings alternate between the sides (A B, B A, ...) after a warm-up; the ratio is the median of the
per-round ratios. Same thread count on both sides (`torch.set_num_threads`).

Why tinyvlm can be faster: it runs the SigLIP layers up to `vision_feature_layer` (-2) only, where
Llava runs all of them (and the post-layernorm) and keeps every hidden state. Everything after the
projector is the same LlamaForCausalLM code, so decode should be a tie.

    python benchmarks/inference.py --quick                                # tiny preset, < 1 minute
    python benchmarks/inference.py --json inference.json --plot inference.png --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `common` next to this script

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    alternate,
    compare,
    describe_machine,
    emit_child_result,
    gib,
    machine_info,
    proc_status_bytes,
    reset_peak_rss,
    run_child,
    start_child,
    timed,
    wait_child,
)
from PIL import Image  # noqa: E402
from tinyvlm.conversion.build import build_preset  # noqa: E402
from tinyvlm.conversion.llava import export_llava  # noqa: E402
from tinyvlm.modeling_tinyvlm import TinyVLMForConditionalGeneration, TinyVLMProcessor  # noqa: E402
from transformers import LlavaForConditionalGeneration, StoppingCriteria  # noqa: E402

SIDES = {"tinyvlm": TinyVLMForConditionalGeneration, "llava": LlavaForConditionalGeneration}
# name -> (preset, dtype, defaults). The real preset is ~1.5B parameters: a prefill is tens of seconds
# on a few CPU cores, so it gets fewer repeats and tokens and batch 1 only unless asked for more.
CONFIGS = {
    "tiny": ("tiny", "float32", {"repeats": 7, "new_tokens": 16, "batch_sizes": [1, 4, 16], "warmup": 1}),
    "tinyllama-siglip-fp32": (
        "tinyllama-siglip",
        "float32",
        {"repeats": 3, "new_tokens": 4, "batch_sizes": [1], "warmup": 0},
    ),
    "tinyllama-siglip-bf16": (
        "tinyllama-siglip",
        "bfloat16",
        {"repeats": 3, "new_tokens": 4, "batch_sizes": [1], "warmup": 0},
    ),
}
FP32_LOGITS_ATOL = 1e-5
PROMPT = "What is in the image?"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/inference.py",
        description="tinyvlm vs transformers' Llava on the same weights: prefill, decode, batched "
        "throughput, peak memory, as ratios.",
        epilog="examples:\n  python benchmarks/inference.py --quick\n"
        "  python benchmarks/inference.py --configs tiny,tinyllama-siglip-fp32 --json out.json "
        "--plot out.png --workdir /tmp/bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument("--quick", action="store_true", help="tiny only, 3 repeats, 8 tokens")
    parser.add_argument("--repeats", type=int, help="timed rounds per side (default: per config)")
    parser.add_argument("--new_tokens", type=int, help="tokens generated per request (default: per config)")
    parser.add_argument("--batch_sizes", help="comma-separated, e.g. 1,4,16 (default: per config)")
    parser.add_argument("--attn", default="sdpa", help="attention implementation, both sides (sdpa, eager)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both sides")
    parser.add_argument("--workdir", help="keep the built folders here and reuse them on the next run")
    parser.add_argument("--skip_memory", action="store_true", help="no peak-memory subprocesses")
    parser.add_argument(
        "--force_bf16", action="store_true", help="run bf16 configs even where bf16 matmul is very slow"
    )
    parser.add_argument("--json", help="write all results here (ratios under the key 'ratios')")
    parser.add_argument("--plot", help="write a PNG of the ratios here")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs = "tiny"
        args.repeats = args.repeats or 3
        args.new_tokens = args.new_tokens or 8
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    if args.batch_sizes:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    return args


def settings_for(name: str, args) -> dict:
    defaults = CONFIGS[name][2]
    return {
        "repeats": args.repeats or defaults["repeats"],
        "new_tokens": args.new_tokens or defaults["new_tokens"],
        "batch_sizes": args.batch_sizes or defaults["batch_sizes"],
        "warmup": defaults["warmup"],
    }


# ---------------------------------------------------------------------------------------------
# Folders, models, inputs
# ---------------------------------------------------------------------------------------------
def build_folders(preset: str, root: Path) -> tuple[Path, Path]:
    """(tinyvlm folder, Llava folder) with the same fp32 weights; reused if already there."""
    ours, theirs = root / preset / "tinyvlm", root / preset / "llava"
    if not (ours / "config.json").exists():
        print(f"building {preset} (random init) in {ours} ...", flush=True)
        build_preset(preset, ours, seed=0, dtype=torch.float32, overwrite=True)
    if not (theirs / "config.json").exists():
        export_llava(ours, theirs, overwrite=True)
    return ours, theirs


def load_side(side: str, folder: Path, dtype: str, attn: str):
    model = SIDES[side].from_pretrained(folder, dtype=getattr(torch, dtype), attn_implementation=attn)
    return model.eval()


def make_inputs(processor, batch_size: int, dtype: str, seed: int = 0):
    """One deterministic noise image + the same chat prompt per request (no padding needed)."""
    size = processor.image_processor.size["height"]
    rng = np.random.default_rng(seed)
    images = [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(batch_size)
    ]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=images, text=[prompt] * batch_size, return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(getattr(torch, dtype))
    return inputs


class _Clock(StoppingCriteria):
    """Records when each generated token is ready; never stops generation."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def generate_timed(model, inputs, new_tokens: int) -> tuple[dict, torch.Tensor]:
    """Greedy generate exactly `new_tokens` tokens; (time to first token, per-token decode, total)."""
    clock = _Clock()
    start = time.perf_counter()
    with torch.inference_mode():
        ids = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            stopping_criteria=[clock],
        )
    total = time.perf_counter() - start
    decode = (clock.stamps[-1] - clock.stamps[0]) / max(len(clock.stamps) - 1, 1)
    return {"prefill_s": clock.stamps[0] - start, "decode_s_per_token": decode, "total_s": total}, ids


# ---------------------------------------------------------------------------------------------
# Checks and timings (both models in this process)
# ---------------------------------------------------------------------------------------------
def check_identical(models: dict, inputs, dtype: str) -> dict:
    """Full-sequence logits of one forward pass, both sides."""
    with torch.inference_mode():
        logits = {side: m(**inputs).logits.float() for side, m in models.items()}
    diff = (logits["tinyvlm"] - logits["llava"]).abs().max().item()
    result = {"logits_max_abs_diff": diff, "dtype": dtype}
    if dtype == "float32":
        result["logits_within_1e-5"] = diff <= FP32_LOGITS_ATOL
    return result


def time_config(models: dict, processor, dtype: str, settings: dict) -> tuple[dict, dict]:
    """Alternating timings; returns ({metric: compare()}, {batch: tokens identical})."""
    inputs = {b: make_inputs(processor, b, dtype, seed=b) for b in settings["batch_sizes"]}
    pixels = make_inputs(processor, 1, dtype)["pixel_values"]
    outputs: dict = {}

    def measure(side: str):
        def run() -> dict:
            # The vision tower + projector alone: where the two sides differ (one SigLIP layer fewer).
            with torch.inference_mode():
                times = {"vision_s": timed(lambda: models[side].get_image_features(pixel_values=pixels))}
            for b, batch in inputs.items():
                t, ids = generate_timed(models[side], batch, settings["new_tokens"])
                outputs[(side, b)] = ids
                if b == 1:
                    times["prefill_s"], times["decode_s_per_token"] = t["prefill_s"], t["decode_s_per_token"]
                times[f"batch{b}_s"] = t["total_s"]
            return times

        return run

    raw = alternate({side: measure(side) for side in models}, settings["repeats"], settings["warmup"])
    timings = {metric: compare(raw["tinyvlm"][metric], raw["llava"][metric]) for metric in raw["tinyvlm"]}
    same = {b: torch.equal(outputs[("tinyvlm", b)], outputs[("llava", b)]) for b in inputs}
    return timings, same


# ---------------------------------------------------------------------------------------------
# Peak memory (one fresh process per side)
# ---------------------------------------------------------------------------------------------
def memory_child(
    side: str, folder: str, processor_folder: str, dtype: str, attn: str, new_tokens: int
) -> None:
    baseline = proc_status_bytes("VmRSS")  # torch, transformers, tinyvlm imported
    model = load_side(side, Path(folder), dtype, attn)
    inputs = make_inputs(TinyVLMProcessor.from_pretrained(processor_folder), 1, dtype)
    gc.collect()
    loaded = proc_status_bytes("VmRSS")
    reset_ok = reset_peak_rss()  # the load's own transients are not inference memory
    generate_timed(model, inputs, new_tokens)
    peak = proc_status_bytes("VmHWM")
    emit_child_result(
        {
            "side": side,
            "baseline_bytes": baseline,
            "loaded_bytes": loaded - baseline,  # safetensors are mmap'd: pages come in on first use
            "peak_bytes": peak - baseline,
            "working_bytes": peak - loaded,
            "peak_reset": reset_ok,
        }
    )


def measure_memory(folders: dict, dtype: str, args, new_tokens: int, parallel: bool) -> dict:
    script = os.path.abspath(__file__)

    def argv(side):
        return [script, "--_memory_child", side, str(folders[side]), str(folders["tinyvlm"]), dtype]

    common = ["--attn", args.attn, "--threads", str(args.threads), "--new_tokens", str(new_tokens)]
    if parallel:  # small models: both at once, each process has its own high-water mark
        procs = {side: start_child(argv(side) + common) for side in SIDES}
        result = {side: wait_child(p) for side, p in procs.items()}
    else:
        result = {side: run_child(argv(side) + common) for side in SIDES}
    result["ratio"] = result["tinyvlm"]["peak_bytes"] / result["llava"]["peak_bytes"]
    return result


# ---------------------------------------------------------------------------------------------
# One config, the report
# ---------------------------------------------------------------------------------------------
def bf16_matmul_slowdown() -> float:
    """How many times slower a bf16 matmul is than fp32 here (CPUs without AVX512-BF16/AMX emulate it)."""
    a, b = torch.randn(256, 1024), torch.randn(1024, 1024)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y
        start = time.perf_counter()
        for _ in range(3):
            x @ y
        times[dtype] = time.perf_counter() - start
    return times[torch.bfloat16] / times[torch.float32]


def run_config(name: str, args, root: Path) -> dict:
    preset, dtype, _ = CONFIGS[name]
    settings = settings_for(name, args)
    if dtype == "bfloat16" and not args.force_bf16:
        slowdown = bf16_matmul_slowdown()
        if slowdown > 10:
            reason = f"bf16 matmul is {slowdown:.0f}x slower than fp32 on this CPU (emulated); --force_bf16 runs it"
            print(f"[{name}] skipped: {reason}", flush=True)
            return {"skipped": reason}
    ours, theirs = build_folders(preset, root)
    folders = {"tinyvlm": ours, "llava": theirs}
    result = {"preset": preset, "dtype": dtype, "attn": args.attn, "settings": settings}
    if not args.skip_memory:  # before loading anything big here: the children need the RAM
        result["memory"] = measure_memory(folders, dtype, args, settings["new_tokens"], preset == "tiny")
    models = {side: load_side(side, folder, dtype, args.attn) for side, folder in folders.items()}
    processor = TinyVLMProcessor.from_pretrained(ours)
    result["identical"] = check_identical(models, make_inputs(processor, 1, dtype), dtype)
    result["timings"], same_tokens = time_config(models, processor, dtype, settings)
    result["identical"]["greedy_tokens_equal"] = all(same_tokens.values())
    del models
    gc.collect()
    return result


def ratios_of(results: dict) -> dict:
    ratios = {}
    for name, res in results.items():
        if "skipped" in res:
            continue
        ratios[name] = {metric: t["ratio_median"] for metric, t in res["timings"].items()}
        if "memory" in res:
            ratios[name]["peak_memory"] = res["memory"]["ratio"]
    return ratios


def print_report(results: dict) -> None:
    for name, res in results.items():
        print(f"\n== {name}")
        if "skipped" in res:
            print(f"skipped: {res['skipped']}")
            continue
        ident = res["identical"]
        verdict = ident.get("logits_within_1e-5", "n/a (bf16)")
        print(
            f"same outputs: logits max |diff| {ident['logits_max_abs_diff']:.2e} (within 1e-5: {verdict}), "
            f"greedy tokens equal: {ident['greedy_tokens_equal']}"
        )
        s = res["settings"]
        print(
            f"{s['repeats']} rounds after {s['warmup']} warm-up, {s['new_tokens']} new tokens, attn {res['attn']}"
        )
        print(f"{'metric':<22}{'tinyvlm':>12}{'llava':>12}{'ratio (median)':>16}{'range':>16}")
        for metric, t in res["timings"].items():
            print(
                f"{metric:<22}{t['a_median']:>12.4f}{t['b_median']:>12.4f}{t['ratio_median']:>16.3f}"
                f"{t['ratio_min']:>8.3f}-{t['ratio_max']:.3f}"
            )
            if metric.startswith("batch"):
                b = int(metric[5:-2])
                tps = [b * s["new_tokens"] / t[k] for k in ("a_median", "b_median")]
                print(f"{'  -> tokens/s':<22}{tps[0]:>12.1f}{tps[1]:>12.1f}")
        if "memory" in res:
            mem = res["memory"]
            a, b = mem["tinyvlm"], mem["llava"]
            print(
                f"{'peak memory GiB':<22}{gib(a['peak_bytes']):>12}{gib(b['peak_bytes']):>12}{mem['ratio']:>16.3f}"
            )
            print(f"{'  RSS after load':<22}{gib(a['loaded_bytes']):>12}{gib(b['loaded_bytes']):>12}")


def _bar(res: dict, metric: str):
    """(median ratio, distance to the lowest, distance to the highest) or None where not measured."""
    if metric == "peak_memory":
        return (res["memory"]["ratio"], 0.0, 0.0) if "memory" in res else None
    t = res["timings"].get(metric)
    if t is None:
        return None
    return t["ratio_median"], t["ratio_median"] - t["ratio_min"], t["ratio_max"] - t["ratio_median"]


def plot(results: dict, path: str) -> None:
    """One bar per metric and config: the median ratio, with the range over rounds as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = {name: res for name, res in results.items() if "skipped" not in res}
    metrics = list(dict.fromkeys(m for res in done.values() for m in res["timings"])) + ["peak_memory"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(metrics) * len(done)), 4))
    width = 0.8 / max(len(done), 1)
    for i, (name, res) in enumerate(done.items()):
        bars = [(j, b) for j, b in enumerate(_bar(res, m) for m in metrics) if b is not None]
        ax.bar(
            [j + i * width for j, _ in bars],
            [b[0] for _, b in bars],
            width,
            yerr=[[b[1] for _, b in bars], [b[2] for _, b in bars]],
            capsize=3,
            label=name,
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(done) - 1) / 2 for j in range(len(metrics))], metrics, rotation=20)
    ax.set_ylabel("tinyvlm / llava (below 1: tinyvlm better)")
    ax.set_title("tinyvlm vs transformers Llava, same weights (median, range over rounds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_memory_child"]:
        side, folder, processor_folder, dtype = argv[1:5]
        args = parse_args(argv[5:])
        torch.set_num_threads(args.threads)
        memory_child(side, folder, processor_folder, dtype, args.attn, args.new_tokens)
        return 0
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(describe_machine(info), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        results = {name: run_config(name, args, root) for name in args.configs}
    print_report(results)
    ratios = ratios_of(results)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": info, "configs": results, "ratios": ratios}, indent=2)
        )
    if args.plot and ratios:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
