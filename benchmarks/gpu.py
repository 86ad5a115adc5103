"""GPU checks in one go (under 10 minutes on one H200): run it on a machine with CUDA.

    python benchmarks/gpu.py --json gpu.json

1. flash_attention_2 runs (both sub-models) and matches sdpa within bf16 tolerance (tiny + real preset);
   without flash-attn installed it says so and the other checks still run.
2. Batch-1 decode tokens/s of the real `tinyllama-siglip` preset in bf16 for eager, sdpa,
   flash_attention_2 and static cache + torch.compile, against the memory-bandwidth bound
   (weights bytes per token / HBM bandwidth; target >= 25% of it).
3. Prefill latency (one 384px image + prompt) and phase 4 questions/s at batch 64 (target >= 100).
4. Phase 3 (LoRA q/v, projector trainable) peak memory at batch 8 x 2048 with gradient checkpointing
   in bf16 (the migration plan says it fits a 16 GB GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import torch
from tinyvlm.conversion.build import build_preset_model

HBM_BYTES_PER_S = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


def sync_time(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def make_batch(model, processor, batch_size: int, question: str = "What shape is in the top left corner?"):
    size = model.config.vision_config.image_size
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    from PIL import Image

    images = [Image.new("RGB", (size, size), (40 * i % 255, 90, 160)) for i in range(batch_size)]
    batch = processor(images=images, text=[prompt] * batch_size, return_tensors="pt", padding=True)
    return {
        k: (v.to("cuda", torch.bfloat16) if k == "pixel_values" else v.to("cuda")) for k, v in batch.items()
    }


def with_attn(model, impl: str):
    model.config._attn_implementation = impl
    model.config.vision_config._attn_implementation = impl
    model.config.text_config._attn_implementation = impl
    model.language_model.config._attn_implementation = impl
    for module in model.modules():
        if hasattr(module, "config") and hasattr(module.config, "_attn_implementation"):
            module.config._attn_implementation = impl
    return model


def check_flash(result: dict, model, processor, name: str) -> None:
    if importlib.util.find_spec("flash_attn") is None:
        result[f"flash_vs_sdpa_{name}"] = "flash-attn not installed"
        return
    batch = make_batch(model, processor, 2)
    with torch.no_grad():
        sdpa = with_attn(model, "sdpa")(**batch).logits.float()
        flash = with_attn(model, "flash_attention_2")(**batch).logits.float()
    diff = (sdpa - flash).abs().max().item()
    result[f"flash_vs_sdpa_{name}"] = {"max_abs_diff": diff, "ok": diff < 0.1 * sdpa.abs().max().item()}


def decode_rate(model, processor, impl: str, new_tokens: int = 128, compile_static: bool = False) -> float:
    with_attn(model, "sdpa" if compile_static else impl)
    batch = make_batch(model, processor, 1)
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    if compile_static:
        kwargs.update(cache_implementation="static", compile_config=None)
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)
    with torch.no_grad():
        model.generate(**batch, **kwargs)  # warm-up (and compilation)
        prefill = sync_time(
            lambda: model.generate(**batch, **{**kwargs, "max_new_tokens": 1, "min_new_tokens": 1})
        )
        total = sync_time(lambda: model.generate(**batch, **kwargs))
    if compile_static:
        model.forward = type(model).forward.__get__(model)
    return (new_tokens - 1) / max(total - prefill, 1e-9)


def prefill_and_throughput(model, processor, result: dict) -> None:
    with_attn(model, "sdpa")
    with torch.no_grad():
        one = make_batch(model, processor, 1)
        model(**one, logits_to_keep=1)
        result["prefill_seconds"] = sync_time(lambda: model(**one, logits_to_keep=1))
        big = make_batch(model, processor, 64)
        gen = {"max_new_tokens": 4, "do_sample": False}
        model.generate(**big, **gen)
        result["phase4_questions_per_s_batch64"] = 64 / sync_time(lambda: model.generate(**big, **gen))


def phase3_peak_memory(batch_size: int = 8, seq_len: int = 2048) -> float:
    from peft import LoraConfig, get_peft_model

    model, processor = build_preset_model("tinyllama-siglip", dtype=torch.bfloat16)
    model = model.cuda()
    model.requires_grad_(False)
    model = get_peft_model(
        model,
        LoraConfig(
            r=64,
            lora_alpha=128,
            target_modules=r".*language_model.*\.(q_proj|v_proj)",
            modules_to_save=["multi_modal_projector"],
        ),
    )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    cfg = model.base_model.model.config
    text = seq_len - cfg.image_seq_length - 1
    ids = torch.cat(
        [
            torch.ones(batch_size, 1, dtype=torch.long),
            torch.full((batch_size, cfg.image_seq_length), cfg.image_token_id),
            torch.randint(3, 31000, (batch_size, text)),
        ],
        dim=1,
    ).cuda()
    pixel_values = torch.randn(batch_size, 3, 384, 384, dtype=torch.bfloat16, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        loss = model(input_ids=ids, pixel_values=pixel_values, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json")
    parser.add_argument("--skip_compile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device")
    name = torch.cuda.get_device_name()
    result = {"device": name, "torch": torch.__version__}
    tiny, tiny_proc = build_preset_model("tiny", dtype=torch.bfloat16)
    check_flash(result, tiny.cuda(), tiny_proc, "tiny")
    model, processor = build_preset_model("tinyllama-siglip", dtype=torch.bfloat16)
    model = model.cuda().eval()
    check_flash(result, model, processor, "real")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
    bandwidth = next((bw for key, bw in HBM_BYTES_PER_S.items() if key in name), None)
    result["bound_tokens_per_s"] = bandwidth / weight_bytes if bandwidth else None
    impls = ["eager", "sdpa"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    result["decode_tokens_per_s"] = {impl: decode_rate(model, processor, impl) for impl in impls}
    if not args.skip_compile:
        result["decode_tokens_per_s"]["static+compile"] = decode_rate(
            model, processor, "sdpa", compile_static=True
        )
    prefill_and_throughput(model, processor, result)
    del model
    torch.cuda.empty_cache()
    result["phase3_peak_gib_batch8x2048_gc"] = phase3_peak_memory()
    if result["bound_tokens_per_s"]:
        best = max(result["decode_tokens_per_s"].values())
        result["decode_fraction_of_bound"] = best / result["bound_tokens_per_s"]
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
