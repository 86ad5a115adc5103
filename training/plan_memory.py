"""`tinyvlm plan-memory`: peak memory per GPU of a training phase (or inference), from the config alone.

    tinyvlm plan-memory --phase lora --batch_size 8 --seq_len 2048 --precision bf16 --gradient_checkpointing

Parameter counts come from the model built on the meta device (no memory, exact per component);
everything else is a formula of the config, written to follow what `tinyvlm train` and the libraries
under it actually keep alive. The assumptions, each checked against the code it describes:

- Precision. `tinyvlm train` loads the folder with `from_pretrained` and no dtype, which in
  transformers 5 means `dtype="auto"`: the weights keep the folder's dtype. `--precision bf16` is a
  folder saved in bf16 (`tinyvlm build --dtype bfloat16`) trained with `--bf16 True`: weights,
  gradients and AdamW states in bf16, no fp32 master copy (the Trainer keeps none; DeepSpeed would).
  `--precision fp32` is fp32 throughout. An fp32 folder trained with `--bf16 True` (autocast) holds
  fp32 weights, gradients and states: plan it as fp32, an upper bound for its activations.
- Trainable parameters, as `training/train.py` `prepare_model`: projector: `multi_modal_projector`;
  lora: LoRA A/B on the LLM's q_proj/v_proj (+ o_proj) and the projector as PEFT `modules_to_save`
  (PEFT keeps the frozen original next to a trainable copy); full: LLM + projector, vision frozen.
  PEFT creates adapter weights in fp32 whatever the model dtype (`autocast_adapter_dtype`).
- `--bits 4|8` (QLoRA): bitsandbytes quantises the LLM's decoder linears (NF4 with double
  quantisation: 0.5 byte + block scales per weight; int8: 1 byte + a fp32 scale per row); the
  vision tower, projector, embeddings and lm_head stay unquantised in the folder's dtype
  (`tinyvlm train` does not take PEFT's `prepare_model_for_kbit_training`, which would cast them and
  so every activation to fp32).
- Optimizer: the Trainer's default `adamw_torch_fused`: two states per trainable parameter in its
  dtype, no temporaries. `adamw_8bit` (`--optim adamw_bnb_8bit`): two 1-byte states plus a fp32
  scale per 256, fp32 states for tensors under 4096 elements.
- Activations: the tensors autograd saves, enumerated per layer in `llm_layer_saved` (SDPA/flash
  attention: q, k, v, output and log-sum-exp, never the score matrix). Rows are padded when the batch
  holds more than one, and with a padding mask transformers repeats K/V to every head before SDPA.
  Each row holds one image; its `image_seq_length` tokens are part of `--seq_len`.
- Gradient checkpointing (non-reentrant, as `tinyvlm train` sets it) keeps each layer's input and
  recomputes one layer at a time.
- The frozen vision tower runs without autograd and saves nothing; the projector's input is its
  only trace.
- Loss: transformers upcasts the logits to fp32; the log-probabilities are saved, and the first
  backward step holds three fp32 batch x seq x vocab buffers at once. `tinyvlm train` computes them
  at labelled positions only (`--labelled_logits_only`, on by default): `--labelled_fraction` of the
  batch x (seq - 1) next-token positions, 1.0 (the upper bound) unless you know your data's share of
  answer tokens, or `--data FILE` to count it (the 99th-percentile row's answer tokens, estimated
  from the text alone); `--labelled_logits_only False` plans the stock every-position loss.
- Peak = weights + optimizer states + max(saved activations + loss buffers, gradients + one layer's
  backward) + overhead (CUDA context, cuBLAS workspace, allocator fragmentation: 0.5 GiB + 5 %; none
  on CPU, where `benchmarks/plan_memory_check.py` subtracts the process baseline).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import logging

from ..conversion.utils import atomic_write_text

logger = logging.get_logger(__name__)

PHASES = ("projector", "lora", "full", "inference")
PRECISIONS = {"bf16": 2, "fp32": 4}
OPTIMIZERS = ("adamw", "adamw_8bit")
DEVICES = ("cuda", "cpu")
CARDS_GB = (8, 16, 24, 40, 80)
GIB = 1024**3
CUDA_CONTEXT_BYTES = 0.5 * GIB  # CUDA context + cuBLAS/cuDNN workspaces, measured ~0.4-0.6 GiB on A100/H100
CUDA_FRAGMENTATION = 0.05  # PyTorch caching allocator: reserved beyond allocated at the peak
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bit + uint8 absmax per 64 + fp32 per 256 blocks
BNB_OPTIM_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit states for smaller tensors
BNB_OPTIM_BLOCK = 256


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs from a config: parameter counts and the dimensions activations scale with."""

    params: dict  # component -> number of parameters
    tensor_sizes: dict  # component -> [numel of each parameter tensor]
    quantizable: tuple  # (numel, out_features) of each LLM linear bitsandbytes would quantise
    lora_targets: dict  # "q_proj"/"v_proj"/"o_proj" -> [(in_features, out_features) per layer]
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    vision_layers_used: int
    image_seq_length: int
    projector_hidden: int


@dataclass(frozen=True)
class Plan:
    phase: str
    batch_size: int
    seq_len: int
    precision: str = "bf16"
    bits: int | None = None
    gradient_checkpointing: bool = False
    lora_r: int = 128
    lora_o_proj: bool = False
    optimizer: str = "adamw"
    device: str = "cuda"
    labelled_logits_only: bool = True
    labelled_fraction: float = 1.0


# ---------------------------------------------------------------------------------------------
# Config -> shape
# ---------------------------------------------------------------------------------------------
def load_config(preset: str | None = None, model: str | None = None):
    """The TinyVLMConfig of a preset or of a saved folder (nothing is loaded but config.json)."""
    if (preset is None) == (model is None):
        raise ValueError("pass exactly one of --preset NAME or --model DIR")
    if preset is not None:
        from ..conversion.build import preset_components

        return preset_components(preset)[0]
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise FileNotFoundError(f"{model}: no config.json (expected a tinyvlm model folder)")
    if os.path.isfile(os.path.join(model, "adapter_config.json")):
        raise ValueError(f"{model} is a LoRA adapter folder; pass the base model or a merged folder")
    from ..modeling_tinyvlm import TinyVLMConfig

    config = TinyVLMConfig.from_pretrained(model)
    if config.model_type != "tinyvlm":
        raise ValueError(f"{model} holds a {config.model_type!r} config, not tinyvlm")
    return config


def _linears(module: nn.Module, prefix: str):
    for name, sub in module.named_modules(prefix=prefix):
        if isinstance(sub, nn.Linear):
            yield name, sub


def model_shape(config) -> ModelShape:
    """Counts from the model built on the meta device: exact, and no memory is allocated."""
    from ..modeling_tinyvlm import TinyVLMForConditionalGeneration
    from .train import QUANTIZATION_SKIP_MODULES, lora_target_modules

    with torch.device("meta"):
        model = TinyVLMForConditionalGeneration(config)
    components = ("vision_tower", "multi_modal_projector", "language_model")
    params = {c: sum(p.numel() for p in getattr(model, c).parameters()) for c in components}
    sizes = {c: [p.numel() for p in getattr(model, c).parameters()] for c in components}
    quantizable = tuple(
        (m.weight.numel(), m.out_features)
        for name, m in _linears(model, "")
        if not any(skip in name for skip in QUANTIZATION_SKIP_MODULES)
    )
    # The regex tinyvlm train hands to PEFT (which full-matches it), so counts follow the training code.
    pattern = lora_target_modules(lora_o_proj=True)
    targets: dict = {}
    for name, m in _linears(model, ""):
        if re.fullmatch(pattern, name):
            targets.setdefault(name.rsplit(".", 1)[-1], []).append((m.in_features, m.out_features))
    text, vision = config.text_config, config.vision_config
    return ModelShape(
        params=params,
        tensor_sizes=sizes,
        quantizable=quantizable,
        lora_targets=targets,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        heads=text.num_attention_heads,
        kv_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        vocab=text.vocab_size,
        vision_hidden=vision.hidden_size,
        vision_intermediate=vision.intermediate_size,
        vision_heads=vision.num_attention_heads,
        vision_layers_used=config.num_vision_layers_used,
        image_seq_length=config.image_seq_length,
        projector_hidden=config.projector_hidden_size,
    )


def check_plan(plan: Plan, shape: ModelShape) -> None:
    if plan.phase not in PHASES:
        raise ValueError(f"phase {plan.phase!r} is not one of {PHASES}")
    if plan.precision not in PRECISIONS:
        raise ValueError(f"precision {plan.precision!r} is not one of {tuple(PRECISIONS)}")
    if plan.bits not in (None, 4, 8):
        raise ValueError(f"bits must be 4 or 8 (or unset), got {plan.bits}")
    if plan.bits is not None and plan.phase != "lora":
        raise ValueError(f"--bits {plan.bits} (QLoRA) needs --phase lora, got --phase {plan.phase}")
    if plan.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {plan.optimizer!r} is not one of {OPTIMIZERS}")
    if plan.device not in DEVICES:
        raise ValueError(f"device {plan.device!r} is not one of {DEVICES}")
    if plan.batch_size < 1 or plan.lora_r < 1:
        raise ValueError(f"batch_size and lora_r must be >= 1, got {plan.batch_size} and {plan.lora_r}")
    if plan.seq_len <= shape.image_seq_length:
        raise ValueError(
            f"seq_len {plan.seq_len} leaves no text: each row holds one image of {shape.image_seq_length} "
            "tokens, and seq_len counts them"
        )
    if not 0 < plan.labelled_fraction <= 1:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {plan.labelled_fraction}")
    if plan.phase == "inference" and plan.gradient_checkpointing:
        raise ValueError("--gradient_checkpointing applies to training phases, not --phase inference")


# ---------------------------------------------------------------------------------------------
# Weights, gradients, optimizer states
# ---------------------------------------------------------------------------------------------
def _weight_bytes(plan: Plan) -> int:
    """Bytes per unquantised weight (QLoRA too: the parts bitsandbytes skips keep the dtype)."""
    return PRECISIONS[plan.precision]


def activation_bytes(plan: Plan) -> int:
    return PRECISIONS[plan.precision]


def lora_shapes(shape: ModelShape, plan: Plan) -> list:
    """(numel of A, numel of B) for each adapted linear: A is r x in, B is out x r."""
    names = ("q_proj", "v_proj", "o_proj") if plan.lora_o_proj else ("q_proj", "v_proj")
    return [(plan.lora_r * i, o * plan.lora_r) for n in names for i, o in shape.lora_targets.get(n, [])]


def weights(shape: ModelShape, plan: Plan) -> dict:
    """Bytes held by parameters, per component."""
    wb = _weight_bytes(plan)
    llm = shape.params["language_model"] * wb
    if plan.bits:
        quantized = sum(n for n, _ in shape.quantizable)
        per_weight = NF4_BYTES_PER_WEIGHT if plan.bits == 4 else 1.0
        scales = 0 if plan.bits == 4 else 4 * sum(out for _, out in shape.quantizable)
        llm = (shape.params["language_model"] - quantized) * wb + quantized * per_weight + scales
    result = {
        "vision tower": shape.params["vision_tower"] * wb,
        "projector": shape.params["multi_modal_projector"] * wb,
        "language model": llm,
    }
    if plan.phase == "lora":
        result["projector (PEFT trainable copy)"] = shape.params["multi_modal_projector"] * wb
        result["LoRA adapters (fp32)"] = 4 * sum(a + b for a, b in lora_shapes(shape, plan))
    return result


def trainable_tensors(shape: ModelShape, plan: Plan) -> list:
    """(numel, bytes per element) of each trainable parameter tensor."""
    wb = _weight_bytes(plan)
    projector = [(n, wb) for n in shape.tensor_sizes["multi_modal_projector"]]
    if plan.phase == "projector":
        return projector
    if plan.phase == "lora":
        return [(n, 4) for pair in lora_shapes(shape, plan) for n in pair] + projector
    if plan.phase == "full":
        return [(n, wb) for n in shape.tensor_sizes["language_model"]] + projector
    return []


def optimizer_bytes(tensors: list, plan: Plan) -> float:
    if plan.optimizer == "adamw":  # exp_avg and exp_avg_sq, each in the parameter's dtype
        return sum(2 * n * b for n, b in tensors)
    eight_bit = 2 * (1 + 4 / BNB_OPTIM_BLOCK)
    return sum(n * eight_bit if n >= BNB_OPTIM_MIN_8BIT_SIZE else 8 * n for n, _ in tensors)


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------
def llm_layer_saved(shape: ModelShape, plan: Plan) -> float:
    """Bytes one Llama decoder layer saves for backward (no checkpointing)."""
    a, tokens = activation_bytes(plan), plan.batch_size * plan.seq_len
    h, q_width, kv_width = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    full = plan.phase == "full"
    # RMSNorm computes in fp32: its fp32 input (a copy for bf16) and the rsqrt are saved; with a
    # trainable weight also the normalised input and the output (the next linears' input).
    norms = 2 * (4 * tokens * h + 4 * tokens + (2 * a * tokens * h if full else 0))
    # With a padding mask transformers repeats K/V to every head before SDPA (use_gqa_in_sdpa), and
    # SDPA turns the bool mask into a float one in the query's dtype in every layer, saved there.
    padded = plan.batch_size > 1
    kv = q_width if padded else kv_width
    attention = a * tokens * (2 * q_width + 2 * kv) + 4 * tokens * shape.heads  # q, k, v, out, lse
    attention += a * tokens * plan.seq_len if padded else 0
    # gate, silu(gate), up saved by SiLU and the product; down_proj's input only if it trains
    mlp = a * tokens * shape.intermediate * (4 if full else 3)
    lora = 0.0
    if plan.phase == "lora":
        # PEFT casts the input to the fp32 adapter; dropout keeps its mask (a float tensor on CPU,
        # bool on CUDA), lora_A its dropped-out input, lora_B lora_A's r-wide output.
        mask = 4 if plan.device == "cpu" else 1
        widths = [h, h] + ([q_width] if plan.lora_o_proj else [])
        lora = sum(tokens * ((mask + 4) * w + 4 * plan.lora_r) for w in widths)
    return norms + attention + mlp + lora


def projector_saved(shape: ModelShape, plan: Plan) -> float:
    """linear_1's input, GELU's input, linear_2's input (the projector trains in every phase)."""
    patches = plan.batch_size * shape.image_seq_length
    return _weight_bytes(plan) * patches * (shape.vision_hidden + 2 * shape.projector_hidden)


def shared_layer_inputs(shape: ModelShape, plan: Plan) -> float:
    """Tensors every decoder layer reads: rotary cos/sin, and under checkpointing the bool padding
    mask (kept for the recomputation). Alive to the end of backward, though with checkpointing they
    are held by the checkpoints rather than by autograd's saved tensors."""
    rotary = 2 * activation_bytes(plan) * plan.seq_len * shape.head_dim
    padded = plan.batch_size > 1 and plan.gradient_checkpointing
    return rotary + (plan.batch_size * plan.seq_len**2 if padded else 0)


def logit_positions(plan: Plan) -> int:
    """Rows of the logits: every position, or with labelled_logits_only the labelled next-token ones."""
    if not plan.labelled_logits_only:
        return plan.batch_size * plan.seq_len
    return round(plan.labelled_fraction * plan.batch_size * (plan.seq_len - 1))


def other_saved(shape: ModelShape, plan: Plan) -> float:
    """Final norm, labels, the image-token mask, the fp32 log-probabilities, shared layer inputs."""
    a, tokens, logits = activation_bytes(plan), plan.batch_size * plan.seq_len, logit_positions(plan)
    final_norm = 4 * tokens * shape.hidden + 4 * tokens
    if plan.phase == "full":  # trainable norm weight and lm_head: their inputs too
        final_norm += a * (tokens + logits) * shape.hidden + 8 * tokens  # + input_ids for the embedding grad
    labelled_mask = tokens if plan.labelled_logits_only else 0
    labels_and_masks = 8 * logits + tokens + labelled_mask  # targets, image-token mask, labelled mask
    log_probs = 4 * logits * shape.vocab
    return final_norm + labels_and_masks + log_probs + shared_layer_inputs(shape, plan)


def activations(shape: ModelShape, plan: Plan) -> dict:
    """Saved-for-backward bytes per part, at the end of the forward pass."""
    a, tokens = activation_bytes(plan), plan.batch_size * plan.seq_len
    per_layer = llm_layer_saved(shape, plan)
    if plan.gradient_checkpointing:  # each layer keeps its input; one layer is recomputed at a time
        llm = shape.layers * a * tokens * shape.hidden
    else:
        llm = shape.layers * per_layer
    return {
        "language model layers": llm,
        "projector": projector_saved(shape, plan),
        "final norm, loss inputs": other_saved(shape, plan),
    }


def layer_backward(shape: ModelShape, plan: Plan) -> float:
    """One decoder layer during backward: its saved tensors (recomputed under checkpointing) plus the
    gradients flowing through it (hidden and MLP widths)."""
    a, tokens = activation_bytes(plan), plan.batch_size * plan.seq_len
    return llm_layer_saved(shape, plan) + a * tokens * (2 * shape.hidden + 2 * shape.intermediate)


def inference_working(shape: ModelShape, plan: Plan) -> dict:
    """Prefill with a KV cache (as generate's first step): the cache, the widest layer's temporaries."""
    a, tokens = activation_bytes(plan), plan.batch_size * plan.seq_len
    kv_cache = 2 * shape.layers * tokens * shape.kv_heads * shape.head_dim * a
    # residual + normed input + fp32 norm temp, then MLP: silu(gate), up and their product at once
    llm_layer = a * tokens * (2 * shape.hidden + 3 * shape.intermediate) + 4 * tokens * shape.hidden
    patches = plan.batch_size * shape.image_seq_length
    vision_layer = a * patches * (3 * shape.vision_hidden + 2 * shape.vision_intermediate)
    return {"KV cache": kv_cache, "largest layer temporaries": max(llm_layer, vision_layer)}


# ---------------------------------------------------------------------------------------------
# Estimate
# ---------------------------------------------------------------------------------------------
def estimate(shape: ModelShape, plan: Plan) -> dict:
    """All parts in bytes and the peak: weights + optimizer + max(activation phase, gradient phase)."""
    check_plan(plan, shape)
    weight_parts = weights(shape, plan)
    tensors = trainable_tensors(shape, plan)
    parts = {"weights": sum(weight_parts.values())}
    if plan.phase == "inference":
        working = inference_working(shape, plan)
        logits = 4 * plan.batch_size * shape.vocab  # generate keeps the last position's logits only
        dynamic, detail = sum(working.values()) + logits, {**working, "last-token logits": logits}
    else:
        saved = activations(shape, plan)
        grads = sum(n * b for n, b in tensors)
        # First backward step: fp32 grads of the log-probs and of the logits next to the saved ones.
        loss_buffers = 8 * logit_positions(plan) * shape.vocab
        checkpoints = saved["language model layers"] if plan.gradient_checkpointing else 0
        late = grads + checkpoints + layer_backward(shape, plan)
        dynamic = max(sum(saved.values()) + loss_buffers, late)
        parts.update({"gradients": grads, "optimizer states": optimizer_bytes(tensors, plan)})
        detail = {
            **{f"saved: {k}": v for k, v in saved.items()},
            "loss backward buffers (fp32)": loss_buffers,
        }
        detail["gradients + one layer's backward (later in backward)"] = late
    parts["activations (peak)"] = dynamic
    subtotal = sum(parts.values())
    overhead = CUDA_CONTEXT_BYTES + CUDA_FRAGMENTATION * subtotal if plan.device == "cuda" else 0.0
    parts["workspace / overhead"] = overhead
    return {
        "plan": dataclasses.asdict(plan),
        "params": dict(shape.params),
        "trainable_params": sum(n for n, _ in tensors),
        "weights": weight_parts,
        "parts": parts,
        "activation_detail": detail,
        "peak_bytes": subtotal + overhead,
        "fits": fits(subtotal + overhead),
    }


def fits(peak_bytes: float, cards_gb=CARDS_GB) -> dict:
    """Per card size: 'yes' under 90 % of it, 'tight' up to 100 %, else 'no'. A "16 GB" card exposes
    about 16 GiB to CUDA; the context is already in the estimate."""
    verdicts = {}
    for gb in cards_gb:
        capacity = gb * GIB
        verdicts[f"{gb} GB"] = (
            "yes" if peak_bytes <= 0.9 * capacity else "tight" if peak_bytes <= capacity else "no"
        )
    return verdicts


def format_report(result: dict) -> str:
    plan, params = result["plan"], result["params"]
    setup = f"{plan['phase']}, batch {plan['batch_size']} x {plan['seq_len']} tokens, {plan['precision']}"
    if plan["bits"]:
        setup += f", LLM in {plan['bits']} bit"
    if plan["phase"] != "inference":
        setup += ", gradient checkpointing" if plan["gradient_checkpointing"] else ", no checkpointing"
        setup += f", {plan['optimizer']}"
        if plan["labelled_logits_only"]:
            setup += f", logits at labelled positions only (fraction {plan['labelled_fraction']:.3g})"
        else:
            setup += ", logits at every position"
    if plan["phase"] == "lora":
        setup += f", LoRA r={plan['lora_r']} on q_proj,v_proj" + (",o_proj" if plan["lora_o_proj"] else "")
    lines = [
        f"plan-memory ({plan['device']}): {setup}",
        "parameters: "
        + ", ".join(f"{k} {v:,}" for k, v in params.items())
        + f"; trainable {result['trainable_params']:,}",
        "",
        f"{'':<56}{'GiB':>8}",
    ]
    for name, value in result["parts"].items():
        lines.append(f"{name:<56}{value / GIB:>8.2f}")
        sub = (
            result["weights"]
            if name == "weights"
            else result["activation_detail"]
            if name.startswith("act")
            else {}
        )
        lines += [f"  {k:<54}{v / GIB:>8.2f}" for k, v in sub.items()]
    lines.append(f"{'peak estimate':<56}{result['peak_bytes'] / GIB:>8.2f}")
    lines.append(
        "  = weights + optimizer + max(saved activations + loss buffers, gradients + one layer) + overhead"
    )
    lines.append("fits: " + " | ".join(f"{card} {verdict}" for card, verdict in result["fits"].items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _lora_r_default() -> int:
    """The training command's default rank, so that both commands mean the same run."""
    from .train import ModelArguments

    return next(f.default for f in dataclasses.fields(ModelArguments) if f.name == "lora_r")


def _true_or_false(value: str) -> bool:
    """tinyvlm train's reading of a boolean flag value, so both commands take the same words
    (imported on use: the training module brings in the Trainer)."""
    from .train import parse_bool

    return parse_bool(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyvlm plan-memory",
        description="Estimate the peak memory per GPU of a training phase (or inference) from the config: "
        "weights, gradients, optimizer states, activations, and which card sizes it fits.",
        epilog="examples:\n"
        "  tinyvlm plan-memory --phase lora --batch_size 8 --seq_len 2048 --precision bf16 --gradient_checkpointing\n"
        "  tinyvlm plan-memory --phase lora --bits 4 --batch_size 16 --seq_len 2048 --gradient_checkpointing\n"
        "  tinyvlm plan-memory --model out/phase2 --phase full --batch_size 4 --seq_len 2048 --json plan.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--phase", required=True, choices=PHASES, help="what trains (inference: prefill only)"
    )
    parser.add_argument(
        "--batch_size", type=int, required=True, help="rows per GPU (per_device_train_batch_size)"
    )
    parser.add_argument(
        "--seq_len",
        type=int,
        required=True,
        help="tokens per row, the image's tokens included (model_max_length)",
    )
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="bf16",
        help="dtype of the weights: tinyvlm train keeps the folder's dtype (bf16: a bf16 folder with --bf16 True)",
    )
    parser.add_argument("--bits", type=int, choices=(4, 8), help="QLoRA: the LLM quantised (phase lora)")
    parser.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="as tinyvlm train's (non-reentrant, every layer)",
    )
    parser.add_argument(
        "--preset", help="tiny or tinyllama-siglip (default: tinyllama-siglip unless --model)"
    )
    parser.add_argument("--model", help="a tinyvlm folder; only its config.json is read")
    parser.add_argument("--lora_r", type=int, help="LoRA rank (default: tinyvlm train's)")
    parser.add_argument("--lora_o_proj", action="store_true", help="LoRA on o_proj too")
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adamw",
        help="adamw: the Trainer's default (adamw_torch_fused); adamw_8bit: --optim adamw_bnb_8bit",
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="cuda", help="cpu: no CUDA context, float dropout masks"
    )
    parser.add_argument(
        "--labelled_fraction",
        type=float,
        help="share of next-token positions with a label (answers); tinyvlm train computes logits only "
        "there. Default 1.0, the upper bound, or what --data gives",
    )
    parser.add_argument(
        "--data",
        help="training data as tinyvlm train's --data_path: --labelled_fraction from its answers (the "
        "99th-percentile row's answer tokens over seq_len), counted without opening an image",
    )
    parser.add_argument(
        "--labelled_logits_only",
        type=_true_or_false,
        default=True,
        metavar="{True,False}",
        help="as tinyvlm train's flag (default True); False: logits at every position, the stock loss",
    )
    parser.add_argument("--json", help="also write the estimate here")
    return parser


def labelled_fraction_from_data(path: str, processor, seq_len: int) -> tuple[float, dict]:
    """The planner's labelled share for rows of `seq_len` tokens: the 99th-percentile row's answer
    tokens (estimated, truncated as training truncates) over its seq_len - 1 next-token positions."""
    from .data import BadRowError, estimate_token_counts, normalize_row, open_rows, text_view

    view, counts = text_view(open_rows(path))
    conversations, bad = [], 0
    for index in range(len(view)):
        try:
            conversations.append(normalize_row(view[index], index, None, counts[index] if counts else None))
        except BadRowError:
            bad += 1
    if not conversations:
        raise ValueError(f"{path}: no usable conversation to count answers in ({bad} malformed rows)")
    lengths, answers = estimate_token_counts(conversations, processor, seq_len, total=len(conversations))
    ranked = sorted(answers)
    p99 = ranked[int(0.99 * (len(ranked) - 1))]
    stats = {
        "rows": len(conversations),
        "malformed_rows": bad,
        "mean_tokens": sum(lengths) / len(lengths),
        "mean_answer_tokens": sum(answers) / len(answers),
        "p99_answer_tokens": p99,
    }
    return min(1.0, max(p99, 1) / (seq_len - 1)), stats


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    preset = args.preset or (None if args.model else "tinyllama-siglip")
    shape = model_shape(load_config(preset=preset, model=args.model))
    fraction = 1.0 if args.labelled_fraction is None else args.labelled_fraction
    if args.data:
        if args.labelled_fraction is not None:
            raise ValueError("pass --labelled_fraction or --data, not both")
        if args.model:
            from ..modeling_tinyvlm import TinyVLMProcessor

            processor = TinyVLMProcessor.from_pretrained(args.model)
        else:
            from ..conversion.build import preset_components

            processor = preset_components(preset)[1]
            logger.warning(
                "counting tokens with the %s preset's offline tokenizer: pass --model for yours", preset
            )
        fraction, stats = labelled_fraction_from_data(args.data, processor, args.seq_len)
        print(
            f"data {args.data}: {stats['rows']} rows, {stats['mean_tokens']:.0f} tokens and "
            f"{stats['mean_answer_tokens']:.0f} answer tokens a row on average, 99th percentile "
            f"{stats['p99_answer_tokens']} answer tokens: labelled fraction {fraction:.3f}"
        )
    logger.info("planning for %s: %s parameters", preset or args.model, f"{sum(shape.params.values()):,}")
    plan = Plan(
        phase=args.phase,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        precision=args.precision,
        bits=args.bits,
        gradient_checkpointing=args.gradient_checkpointing,
        lora_r=args.lora_r or _lora_r_default(),
        lora_o_proj=args.lora_o_proj,
        optimizer=args.optimizer,
        device=args.device,
        labelled_logits_only=args.labelled_logits_only,
        labelled_fraction=fraction,
    )
    result = estimate(shape, plan)
    print(format_report(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0
