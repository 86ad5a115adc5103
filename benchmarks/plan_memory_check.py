"""`tinyvlm plan-memory` against measured peaks on CPU, side by side.

Each case runs in a fresh process: import torch/transformers/peft and the training code, read the
resident set (the baseline), build the preset at random init directly in the target dtype, prepare it
as `tinyvlm train` does (`prepare_model`, the Trainer's activation checkpointing call and its default
optimizer, whose states are allocated before the measured step), reset the high-water mark, run the
case (one optimizer step: forward with labels, backward, step, zero_grad; or one prefill for
inference) and read VmHWM. Measured peak = VmHWM - baseline; the planner runs with `--device cpu`
(no CUDA context, float dropout masks).

CPU caveats: glibc's malloc raises its mmap threshold as large blocks are freed (up to 32 MiB), so
the per-layer temporaries of a step end up in heap arenas that it does not hand back: RSS then
exceeds the live tensors by ~1-1.5 GiB on the real preset. `--malloc_mmap_threshold 65536` fixes
the threshold so that RSS follows the live tensors, which is what the planner models (on a GPU the
caching allocator's slack is the planner's 5 % term). bf16 matmuls are emulated on CPUs without AVX512-BF16/AMX (orders of magnitude slower),
so the default cases are fp32; QLoRA (`--bits`) is not measured here. For the tiny preset the fixed
costs of a process (allocator arenas, oneDNN caches) dominate: reported, not a target.

    python benchmarks/plan_memory_check.py --preset tiny                        # seconds
    python benchmarks/plan_memory_check.py --json plan_check.json               # real preset, ~15-25 min
    python benchmarks/plan_memory_check.py --malloc_mmap_threshold 65536        # RSS = live tensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `common` next to this script

from common import (  # noqa: E402
    GIB,
    describe_machine,
    emit_child_result,
    machine_info,
    proc_status_bytes,
    reset_peak_rss,
    run_child,
)

PADDING = 8  # tokens of padding on the last row of a batch of several (make_batch)
# name -> plan fields; seq_len "+N" means the image's tokens + N text tokens
CASES = {
    "inference-fp32": {"phase": "inference", "precision": "fp32", "batch_size": 1, "seq_len": "+256"},
    "lora-fp32": {"phase": "lora", "precision": "fp32", "batch_size": 1, "seq_len": "+256"},
    "lora-fp32-gc": {
        "phase": "lora",
        "precision": "fp32",
        "batch_size": 1,
        "seq_len": "+256",
        "gradient_checkpointing": True,
    },
    "projector-fp32-b2": {"phase": "projector", "precision": "fp32", "batch_size": 2, "seq_len": "+256"},
    # the stock loss (logits at every position) next to tinyvlm train's labelled-positions-only loss
    "lora-fp32-full-logits": {
        "phase": "lora",
        "precision": "fp32",
        "batch_size": 1,
        "seq_len": "+256",
        "labelled_logits_only": False,
    },
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/plan_memory_check.py",
        description="Planned (tinyvlm plan-memory) vs measured peak memory on CPU, one process per case.",
        epilog="example:\n  python benchmarks/plan_memory_check.py --cases lora-fp32,lora-fp32-gc --json check.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", default="tinyllama-siglip", help="tiny or tinyllama-siglip")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {list(CASES)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--malloc_mmap_threshold",
        type=int,
        help="set glibc's MALLOC_MMAP_THRESHOLD_ in the children (e.g. 65536): freed tensors go back to "
        "the OS at once, so RSS follows the live tensors instead of what glibc's heap retains",
    )
    parser.add_argument("--json", help="write planned and measured numbers here")
    args = parser.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    return args


def make_plan(case: dict, image_seq_length: int):
    from tinyvlm.training.plan_memory import Plan

    fields = dict(case)
    if isinstance(fields["seq_len"], str):
        fields["seq_len"] = image_seq_length + int(fields["seq_len"])
    b, s = fields["batch_size"], fields["seq_len"]
    # make_batch labels the text after the image, less the padded row's padding.
    labelled = b * (s - 1 - image_seq_length) - (PADDING if b > 1 else 0)
    return Plan(device="cpu", labelled_fraction=labelled / (b * (s - 1)), **fields)


# ---------------------------------------------------------------------------------------------
# Child: build, prepare, measure
# ---------------------------------------------------------------------------------------------
def make_batch(config, plan, dtype):
    """One image per row at the start, random text after it; labels on the text only (as the collator)."""
    import torch

    g = torch.Generator().manual_seed(0)
    b, s, p = plan.batch_size, plan.seq_len, config.image_seq_length
    ids = torch.randint(3, config.text_config.vocab_size - 2, (b, s), generator=g)
    ids[:, 0] = config.text_config.bos_token_id
    ids[:, 1 : 1 + p] = config.image_token_id
    labels = ids.clone()
    labels[:, : 1 + p] = -100
    mask = torch.ones_like(ids)
    if b > 1:  # a padded row, as in a real batch: transformers then builds a mask
        mask[-1, -PADDING:] = 0
        labels[-1, -PADDING:] = -100
    size = config.vision_config.image_size
    pixels = torch.randn(b, 3, size, size, generator=g).to(dtype)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


def prepare_training(model, plan, tmp_dir: str):
    """What `tinyvlm train` and the Trainer do before the first step; returns (model, optimizer)."""
    from tinyvlm.training.train import ModelArguments, enable_activation_checkpointing, prepare_model
    from transformers import Trainer, TrainingArguments

    model_args = ModelArguments(
        model_name_or_path=tmp_dir,
        phase=plan.phase,
        lora_r=plan.lora_r,
        lora_o_proj=plan.lora_o_proj,
        labelled_logits_only=plan.labelled_logits_only,
    )
    training_args = TrainingArguments(output_dir=tmp_dir, use_cpu=True, report_to=[])
    model = prepare_model(model, model_args, training_args)
    if plan.gradient_checkpointing:  # the Trainer's call, with tinyvlm train's kwargs
        enable_activation_checkpointing(model)
    model.train()
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = cls(params, **kwargs)
    for p in params:  # allocate the states now: the measured step is a steady-state one
        p.grad = p.new_zeros(p.shape)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


class RssSampler:
    """Samples the resident set every few milliseconds in a thread and keeps the maximum per stage
    (forward, backward, step), to say where the peak happens. torch releases the GIL in its ops."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s, self.stage, self.peaks = interval_s, "setup", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        with open("/proc/self/statm", encoding="ascii") as f:
            while not self._stop.is_set():
                f.seek(0)
                rss = int(f.read().split()[1]) * self._page
                self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), rss)
                time.sleep(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def child(preset: str, case_name: str, threads: int) -> None:
    import tempfile

    import torch
    import transformers  # noqa: F401  (part of the baseline)
    from tinyvlm.conversion.build import preset_components
    from tinyvlm.modeling_tinyvlm import TinyVLMForConditionalGeneration
    from tinyvlm.training import train  # noqa: F401  (peft and the Trainer: part of the baseline)

    torch.set_num_threads(threads)
    config = preset_components(preset)[0]
    plan = make_plan(CASES[case_name], config.image_seq_length)
    dtype = torch.float32 if plan.precision == "fp32" else torch.bfloat16
    baseline = proc_status_bytes("VmRSS")
    torch.set_default_dtype(dtype)  # random init directly in the target dtype
    model = TinyVLMForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    batch = make_batch(config, plan, dtype)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if plan.phase == "inference":
            model.eval()
        else:
            model, optimizer = prepare_training(model, plan, tmp)
        setup = proc_status_bytes("VmRSS")
        reset_ok = reset_peak_rss()
        with RssSampler() as sampler:
            sampler.stage = "forward"
            if plan.phase == "inference":
                with torch.inference_mode():
                    model(
                        **{k: v for k, v in batch.items() if k != "labels"}, use_cache=True, logits_to_keep=1
                    )
            else:
                loss = model(**batch).loss
                sampler.stage = "backward"
                loss.backward()
                sampler.stage = "step"
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sampler.stage = "done"
        peak = proc_status_bytes("VmHWM")
    emit_child_result(
        {
            "case": case_name,
            "plan": plan.__dict__,
            "setup_bytes": setup - baseline,
            "peak_bytes": peak - baseline,
            "peak_reset": reset_ok,
            "stage_peaks_bytes": {k: v - baseline for k, v in sampler.peaks.items()},
            "seconds": time.perf_counter() - start,
        }
    )


# ---------------------------------------------------------------------------------------------
# Parent: plan, measure, compare
# ---------------------------------------------------------------------------------------------
def planned(preset: str, case_name: str) -> dict:
    from tinyvlm.training.plan_memory import estimate, load_config, model_shape

    config = load_config(preset=preset)
    plan = make_plan(CASES[case_name], config.image_seq_length)
    result = estimate(model_shape(config), plan)
    static = result["parts"]["weights"] + result["parts"].get("optimizer states", 0)
    return {"peak_bytes": result["peak_bytes"], "static_bytes": static, "estimate": result}


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'case':<20}{'seq':>6}{'planned GiB':>13}{'measured GiB':>14}{'ratio':>8}"
        f"{'static planned':>16}{'static measured':>17}{'step s':>8}"
    )
    for r in rows:
        m, p = r["measured"], r["planned"]
        print(
            f"{r['case']:<20}{m['plan']['seq_len']:>6}{p['peak_bytes'] / GIB:>13.2f}{m['peak_bytes'] / GIB:>14.2f}"
            f"{p['peak_bytes'] / m['peak_bytes']:>8.3f}{p['static_bytes'] / GIB:>16.2f}"
            f"{m['setup_bytes'] / GIB:>17.2f}{m['seconds']:>8.0f}"
        )
    print("ratio = planned / measured; static = weights + optimizer states (measured: RSS before the step)")
    for r in rows:  # sampled every 5 ms, so a short-lived maximum can be missed; VmHWM cannot
        stages = r["measured"].get("stage_peaks_bytes", {})
        sampled = ", ".join(f"{k} {v / GIB:.2f}" for k, v in stages.items() if k != "done")
        print(f"  {r['case']}: sampled peak per stage (GiB): {sampled}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_child"]:
        child(argv[1], argv[2], int(argv[3]))
        return 0
    args = parse_args(argv)
    if args.malloc_mmap_threshold:  # inherited by the children (run_child copies os.environ)
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    info = machine_info()
    info["malloc_mmap_threshold"] = os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default (dynamic)")
    print(describe_machine(info), flush=True)
    rows = []
    for name in args.cases:  # one at a time: the real preset needs most of the RAM
        print(f"[{name}] running ...", flush=True)
        measured = run_child([os.path.abspath(__file__), "--_child", args.preset, name, str(args.threads)])
        row = {"case": name, "planned": planned(args.preset, name), "measured": measured}
        row["ratio"] = row["planned"]["peak_bytes"] / measured["peak_bytes"]
        print(
            f"[{name}] planned {row['planned']['peak_bytes'] / GIB:.2f} GiB, measured "
            f"{measured['peak_bytes'] / GIB:.2f} GiB ({measured['seconds']:.0f} s)",
            flush=True,
        )
        rows.append(row)
    print_table(rows)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "preset": args.preset, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
