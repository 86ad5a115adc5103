"""GPU checks in one go (a few minutes on one H200), for a session that has a CUDA device:

    python benchmarks/gpu.py --json gpu.json
    python benchmarks/gpu.py --device cpu --quick     # the same code paths on the tiny preset (smoke test)

1. flash_attention_2 runs in both sub-models and matches sdpa (tiny and real preset); without
   flash-attn installed that check says so and the others still run.
2. Batch-1 decode tokens/s of the real `tinyllama-siglip` preset in bf16 for eager, sdpa,
   flash_attention_2 and static cache + torch.compile, against the memory-bandwidth bound (language
   model weight bytes per token / HBM bandwidth; target >= 25% of it).
3. Prefill latency (one 384px image + prompt) and phase 4 questions/s at batch 64 through the VQA
   evaluation's own `generate_answers` (target >= 100).
4. Phase 3 peak memory at batch 8 x 2048, bf16, gradient checkpointing, set up by `tinyvlm train`'s
   own `prepare_model` (LoRA r=128 on q/v + projector), next to `tinyvlm plan-memory`'s estimate of
   the same step (the migration plan says it fits a 16 GB GPU); again with the stock every-position
   logits, and at phase3_lora.yaml's batch 16.

Design choices:
- Every check is fenced: a failure is recorded under its name with the error and the rest still run,
  and the JSON is rewritten after each check, so one bad step never costs the whole device session.
- Static cache + compile goes through transformers' own path (`cache_implementation="static"` plus a
  `CompileConfig`): `generate` compiles only the decode step, and the prefill, vision tower included,
  runs uncompiled once per call.
- Times are medians of several repeats after a warm-up; decode tokens/s is (N-1) new tokens over the
  time of an N-token generate minus a 1-token one, so the prefill drops out.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402
from tinyvlm.conversion.build import build_preset_model  # noqa: E402

# Peak HBM bandwidth in bytes/s, matched against torch.cuda.get_device_name().
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L40S": 0.864e12, "A10": 0.6e12}
PHASE4_TARGET_QUESTIONS_PER_S = 100
DECODE_TARGET_FRACTION = 0.25
GIB = 1024**3


class Settings:
    def __init__(self, device: str, quick: bool):
        self.device = torch.device(device)
        self.quick = quick
        self.preset = "tiny" if quick else "tinyllama-siglip"
        self.dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.new_tokens = 8 if quick else 128
        self.repeats = 2 if quick else 3
        self.eval_batch = 4 if quick else 64
        self.eval_questions = 8 if quick else 256
        self.train_batch, self.train_seq = (2, 64) if quick else (8, 2048)
        self.lora_r = 8 if quick else 128


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(settings: Settings, preset: str | None = None):
    # Random init straight on the device: the real preset is 1.5B parameters.
    return build_preset_model(preset or settings.preset, dtype=settings.dtype, device=settings.device)


def make_batch(model, processor, batch_size: int, question: str = "What shape is in the top left corner?"):
    from PIL import Image

    size = model.config.vision_config.image_size
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    images = [Image.new("RGB", (size, size), (40 * i % 255, 90, 160)) for i in range(batch_size)]
    processor.tokenizer.padding_side = "left"
    batch = processor(images=images, text=[prompt] * batch_size, return_tensors="pt", padding=True)
    batch = batch.to(model.device)
    batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    return batch


def attention_implementations(device: torch.device) -> list[str]:
    impls = ["eager", "sdpa"]
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        impls.append("flash_attention_2")
    return impls


# ---------------------------------------------------------------------------------------------
# Checks: each returns a JSON-able dict
# ---------------------------------------------------------------------------------------------
def check_flash(settings: Settings, model, processor) -> dict:
    if settings.device.type != "cuda":
        return {"skipped": "flash_attention_2 needs CUDA"}
    if importlib.util.find_spec("flash_attn") is None:
        return {"skipped": "flash-attn not installed (pip install '.[flash]')"}
    batch = make_batch(model, processor, 2)
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(**batch).logits.float()
        model.set_attn_implementation("flash_attention_2")
        used = {
            "language_model": model.language_model.config._attn_implementation,
            "vision_tower": model.vision_tower.config._attn_implementation,
        }
        flash = model(**batch).logits.float()
        model.set_attn_implementation("sdpa")
    diff = (sdpa - flash).abs().max().item()
    scale = sdpa.abs().max().item()
    same_argmax = (sdpa.argmax(-1) == flash.argmax(-1)).float().mean().item()
    ok = all(v == "flash_attention_2" for v in used.values()) and diff <= 0.05 * scale
    return {
        "used": used,
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "argmax_agreement": same_argmax,
        "ok": ok,
    }


def static_compile_kwargs(settings: Settings) -> dict:
    """generate() kwargs for a static cache with a compiled decode step: CUDA graphs
    ("reduce-overhead") on GPU; on CPU transformers compiles only when told to."""
    from transformers import CompileConfig

    cuda = settings.device.type == "cuda"
    compile_config = CompileConfig(
        fullgraph=True, dynamic=False, mode="reduce-overhead" if cuda else "default"
    )
    compile_config._compile_all_devices = not cuda
    return {"cache_implementation": "static", "compile_config": compile_config}


def decode_rate(settings: Settings, model, processor, impl: str, compile_static: bool = False) -> dict:
    model.set_attn_implementation(impl)
    batch = make_batch(model, processor, 1)
    n = settings.new_tokens
    kwargs = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False}
    if compile_static:
        kwargs.update(static_compile_kwargs(settings))
    one = {**kwargs, "max_new_tokens": 1, "min_new_tokens": 1}
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(**batch, **kwargs)  # warm-up, and the compilation
        first_call = time.perf_counter() - start
        model.generate(**batch, **kwargs)
        prefill = median_seconds(lambda: model.generate(**batch, **one), settings.device, settings.repeats)
        total = median_seconds(lambda: model.generate(**batch, **kwargs), settings.device, settings.repeats)
    model.set_attn_implementation("sdpa")
    return {
        "tokens_per_s": (n - 1) / max(total - prefill, 1e-9),
        "generate_seconds": total,
        "first_call_seconds": first_call,
    }


def check_decode(settings: Settings, model, processor, compile_static: bool = False) -> dict:
    """Batch-1 decode for each attention implementation, or (compile_static) for a static cache with a
    compiled decode step, against the bandwidth bound."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
    name = torch.cuda.get_device_name(settings.device) if settings.device.type == "cuda" else ""
    bandwidth = next((bw for key, bw in HBM_BYTES_PER_S.items() if key in name), None)
    bound = bandwidth / weight_bytes if bandwidth else None
    result = {"lm_weight_bytes": weight_bytes, "bound_tokens_per_s": bound, "tokens_per_s": {}, "errors": {}}
    if compile_static:
        variants = [("static+compile", "sdpa", True)]
    else:
        variants = [(impl, impl, False) for impl in attention_implementations(settings.device)]
    for label, impl, compiled in variants:
        try:
            measured = decode_rate(settings, model, processor, impl, compiled)
            result["tokens_per_s"][label] = measured["tokens_per_s"]
            result.setdefault("first_call_seconds", {})[label] = measured["first_call_seconds"]
        except Exception as error:  # one backend failing must not hide the others
            result["errors"][label] = f"{type(error).__name__}: {error}"[:2000]
    if bound and result["tokens_per_s"]:
        best = max(result["tokens_per_s"], key=result["tokens_per_s"].get)
        result["best"] = best
        result["fraction_of_bound"] = result["tokens_per_s"][best] / bound
        result["target_met"] = result["fraction_of_bound"] >= DECODE_TARGET_FRACTION
    return result


def check_prefill(settings: Settings, model, processor) -> dict:
    batch = make_batch(model, processor, 1)
    result = {"prompt_tokens": int(batch["input_ids"].shape[1]), "seconds": {}}
    with torch.inference_mode():
        for impl in attention_implementations(settings.device):
            model.set_attn_implementation(impl)
            model(**batch, logits_to_keep=1)
            result["seconds"][impl] = median_seconds(
                lambda: model(**batch, logits_to_keep=1), settings.device, settings.repeats + 2
            )
    model.set_attn_implementation("sdpa")
    return result


def check_phase4_throughput(settings: Settings, model, processor, compile_static: bool = False) -> dict:
    """Questions/s through the evaluation's own batched generate (max 16 new tokens, the default).
    A random model rarely stops early, so this is the slow end of what trained weights give."""
    from PIL import Image
    from tinyvlm.training.evaluate_vqa import generate_answers
    from tinyvlm.training.vqa_eval import VQASample

    size = model.config.vision_config.image_size
    samples = [
        VQASample(
            i, "What colour is the square?", Image.new("RGB", (size, size), (i * 37 % 255, 80, 200)), []
        )
        for i in range(settings.eval_questions)
    ]
    kwargs = {"generate_kwargs": static_compile_kwargs(settings) if compile_static else None}
    warm = samples[: settings.eval_batch]
    generate_answers(model, processor, warm, batch_size=settings.eval_batch, **kwargs)
    synchronize(settings.device)
    start = time.perf_counter()
    generate_answers(model, processor, samples, batch_size=settings.eval_batch, **kwargs)
    synchronize(settings.device)
    seconds = time.perf_counter() - start
    rate = len(samples) / seconds
    return {
        "batch_size": settings.eval_batch,
        "questions": len(samples),
        "questions_per_s": rate,
        "target_met": rate >= PHASE4_TARGET_QUESTIONS_PER_S if not settings.quick else None,
    }


def check_phase3_memory(settings: Settings, batch_size: int, labelled_logits_only: bool = True) -> dict:
    from plan_memory_check import prepare_training
    from tinyvlm.training import plan_memory as pm

    model, _ = build(settings)
    config = model.config
    b, seq = batch_size, settings.train_seq
    plan = pm.Plan(
        phase="lora",
        batch_size=b,
        seq_len=seq,
        precision="bf16" if settings.dtype == torch.bfloat16 else "fp32",
        gradient_checkpointing=True,
        lora_r=settings.lora_r,
        device=settings.device.type,
        labelled_logits_only=labelled_logits_only,
    )
    # tinyvlm train's preparation, the Trainer's checkpointing call and optimizer (states allocated)
    model, optimizer = prepare_training(model, plan, "/tmp/tinyvlm-gpu-check")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.text_config.vocab_size - 3, (b, seq), generator=generator)
    ids[:, 1 : 1 + config.image_seq_length] = config.image_token_id
    labels = ids.clone()
    prompt = 1 + config.image_seq_length
    labels[:, : prompt + 3 * (seq - prompt) // 4] = -100  # the answer: the last quarter of the text
    labelled = int((labels[:, 1:] != -100).sum())
    size = config.vision_config.image_size
    batch = {
        "input_ids": ids.to(settings.device),
        "attention_mask": torch.ones_like(ids, device=settings.device),
        "labels": labels.to(settings.device),
        "pixel_values": torch.randn(b, 3, size, size, generator=generator).to(
            settings.device, settings.dtype
        ),
    }
    if settings.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(settings.device)
    step_seconds = []
    for _ in range(3):
        synchronize(settings.device)
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(settings.device)
        step_seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_reserved(settings.device) if settings.device.type == "cuda" else None
    allocated = torch.cuda.max_memory_allocated(settings.device) if settings.device.type == "cuda" else None
    plan = dataclasses.replace(plan, labelled_fraction=labelled / (b * (seq - 1)))
    estimate = pm.estimate(pm.model_shape(config), plan)
    del model, optimizer, batch
    if settings.device.type == "cuda":
        torch.cuda.empty_cache()
    result = {
        "batch": f"{b} x {seq}",
        "lora_r": settings.lora_r,
        "labelled_fraction": round(plan.labelled_fraction, 3),
        "step_seconds_median": statistics.median(step_seconds),
        "tokens_per_s": b * seq / statistics.median(step_seconds),
        "planned_peak_gib": estimate["peak_bytes"] / GIB,
        "planned_fits": estimate["fits"],
    }
    if peak is not None:
        result.update(
            peak_reserved_gib=peak / GIB,
            peak_allocated_gib=allocated / GIB,
            planned_over_measured=estimate["peak_bytes"] / peak,
            fits_16gb=peak <= 16 * GIB,
        )
    return result


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def write_json(path: str | None, result: dict) -> None:
    if not path:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=str)
    os.replace(tmp, path)


def run_check(result: dict, name: str, fn: Callable[[], dict], json_path: str | None) -> None:
    start = time.perf_counter()
    print(f"[gpu.py] {name} ...", flush=True)
    try:
        result["checks"][name] = fn()
    except Exception as error:
        traceback.print_exc()
        result["checks"][name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
    result["checks"][name]["wall_seconds"] = round(time.perf_counter() - start, 1)
    print(f"[gpu.py] {name}: {json.dumps(result['checks'][name], default=str)}", flush=True)
    write_json(json_path, result)


def summary(result: dict) -> list[str]:
    checks, lines = result["checks"], []
    decode = dict(checks.get("decode_batch1", {}))
    compiled = checks.get("decode_batch1_static_compile", {}).get("tokens_per_s", {})
    decode["tokens_per_s"] = {**decode.get("tokens_per_s", {}), **compiled}
    if decode["tokens_per_s"] and decode.get("bound_tokens_per_s"):
        decode["best"] = max(decode["tokens_per_s"], key=decode["tokens_per_s"].get)
        decode["fraction_of_bound"] = decode["tokens_per_s"][decode["best"]] / decode["bound_tokens_per_s"]
    if decode["tokens_per_s"]:
        rates = ", ".join(f"{k} {v:.0f}" for k, v in decode["tokens_per_s"].items())
        lines.append(f"decode tokens/s (batch 1): {rates}")
        if decode.get("bound_tokens_per_s"):
            lines.append(
                f"  bandwidth bound {decode['bound_tokens_per_s']:.0f} tokens/s; best {decode['best']} at "
                f"{decode['fraction_of_bound']:.0%} of it (target >= {DECODE_TARGET_FRACTION:.0%})"
            )
    for name in ("phase4_batch", "phase4_batch_static_compile"):
        if "questions_per_s" in checks.get(name, {}):
            phase4 = checks[name]
            lines.append(
                f"{name} questions/s at batch {phase4['batch_size']}: {phase4['questions_per_s']:.1f}"
            )
    for name in ("phase3_memory", "phase3_memory_full_logits", "phase3_memory_batch16"):
        memory = checks.get(name, {})
        if "peak_reserved_gib" in memory:
            lines.append(
                f"{name} at {memory['batch']}: {memory['peak_reserved_gib']:.2f} GiB reserved "
                f"({memory['peak_allocated_gib']:.2f} allocated), plan-memory {memory['planned_peak_gib']:.2f} GiB"
            )
    failed = [name for name, check in checks.items() if "error" in check]
    lines.append("failed checks: " + (", ".join(failed) if failed else "none"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", help="write the results here (rewritten after every check)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    parser.add_argument(
        "--quick", action="store_true", help="tiny preset, small sizes: checks the code paths"
    )
    parser.add_argument("--skip_compile", action="store_true", help="leave out static cache + torch.compile")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device (or --device cpu --quick for a smoke run)")
    settings = Settings(args.device, args.quick)
    result = {
        "machine": machine_info(),
        "preset": settings.preset,
        "dtype": str(settings.dtype),
        "checks": {},
    }
    # Cheap, certain measurements first; the compiled ones (minutes of compiling) last, so that a
    # time limit cuts those and not the memory check.
    model, processor = build(settings, "tiny")
    run_check(result, "flash_tiny", lambda: check_flash(settings, model, processor), args.json)
    if not args.quick:
        model, processor = build(settings)
        run_check(result, "flash_real", lambda: check_flash(settings, model, processor), args.json)
    run_check(result, "decode_batch1", lambda: check_decode(settings, model, processor), args.json)
    run_check(result, "prefill", lambda: check_prefill(settings, model, processor), args.json)
    run_check(result, "phase4_batch", lambda: check_phase4_throughput(settings, model, processor), args.json)
    model = None  # the training steps' peaks must not include the inference model
    if settings.device.type == "cuda":
        torch.cuda.empty_cache()
    b = settings.train_batch
    run_check(result, "phase3_memory", lambda: check_phase3_memory(settings, b), args.json)
    run_check(result, "phase3_memory_full_logits", lambda: check_phase3_memory(settings, b, False), args.json)
    # phase3_lora.yaml's batch
    run_check(result, "phase3_memory_batch16", lambda: check_phase3_memory(settings, 2 * b), args.json)
    if not args.skip_compile:
        model, processor = build(settings)
        run_check(
            result,
            "decode_batch1_static_compile",
            lambda: check_decode(settings, model, processor, compile_static=True),
            args.json,
        )
        run_check(
            result,
            "phase4_batch_static_compile",
            lambda: check_phase4_throughput(settings, model, processor, compile_static=True),
            args.json,
        )
    print("\n".join(summary(result)))
    return 1 if any("error" in check for check in result["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
