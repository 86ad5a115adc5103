"""`tinyvlm train`: phase 2 (projector warm-up), phase 3 (LoRA / QLoRA) or full fine-tuning.

    tinyvlm train --phase projector --model_name_or_path tinyvlm-init --data_path llava.json \\
        --image_folder images --output_dir out/phase2 --per_device_train_batch_size 32 --bf16 True
    tinyvlm train configs/phase3_lora.yaml --output_dir out/phase3      # a config file, then overrides

Phases (what trains):
- projector: `multi_modal_projector` only; vision tower and LLM frozen. Output: a complete tinyvlm
  folder, the next phase's `--model_name_or_path`.
- lora: PEFT LoRA on the language model's q_proj and v_proj (o_proj with `--lora_o_proj`), never on
  the vision tower, plus the projector in full (`modules_to_save`). `--bits 4|8` loads the LLM in
  bitsandbytes 4/8 bit (QLoRA); vision tower, projector and lm_head stay unquantised. Output: a PEFT
  adapter folder (safetensors) with the processor; `tinyvlm merge` turns it into a complete folder.
- full: everything but the vision tower (`--freeze_vision_tower False` trains it too).

Design choices:
- The stock `transformers.Trainer`, no subclass: the collator builds model inputs, the processor goes
  in as `processing_class` so every checkpoint carries it (and the code files, through the model's
  Auto-class registration) and loads with the Auto classes.
- Arguments are dataclasses parsed by `HfArgumentParser`, with the names of LLaVA's scripts. A first
  argument ending in .yaml/.yml/.json is a config file; flags after it override it. Phase defaults
  (TinyLLaVA's recipe: phase 2 lr 1e-3, phase 3 lr 2e-4, cosine, warmup 3 %, one epoch) apply only
  to what neither the command line nor the config file sets.
- LoRA r=128, alpha=256 by default: the values of both reference recipes (LLaVA-1.5's
  finetune_lora.sh and TinyLLaVA's LoRA scripts), so their tuned learning rate 2e-4 carries over
  unchanged (it was tuned for alpha/r = 2). On TinyLlama with q_proj+v_proj that is ~18M trainable
  parameters, 1.6 % of the LLM.
- Gradient checkpointing uses `use_reentrant=False`, transformers' recommendation. The model's own
  input-grad hook makes the token embeddings require grad (a frozen base needs it) and leaves a frozen
  vision tower out of autograd.
- `--labelled_logits_only` (on): lm_head and the loss run at answer positions only, the same loss
  without the batch x seq x vocab fp32 logits, the largest tensors of a LoRA step on LLaVA data.
- The final output is written to a temporary folder and moved in; `tinyvlm_training.json` (phase,
  data counts, LoRA settings, learning rate, batch sizes; read by the model card) is written last,
  so its presence marks a complete output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
import transformers
from transformers import HfArgumentParser, Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from ..conversion.utils import atomic_write_text
from ..modeling_tinyvlm import TinyVLMForConditionalGeneration, TinyVLMProcessor
from .data import DataCollatorForVLM, RowBuildingCollator, SupervisedDataset, length_index, open_rows

logger = logging.get_logger(__name__)

TRAINING_RECORD = "tinyvlm_training.json"
SKIPPED_ROWS = "skipped_rows.jsonl"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
# transformers 5 folded `warmup_ratio` into `warmup_steps` (a float < 1 is a ratio).
HAS_WARMUP_RATIO = "warmup_ratio" in {f.name for f in dataclasses.fields(TrainingArguments)}
WARMUP_KEY = "warmup_ratio" if HAS_WARMUP_RATIO else "warmup_steps"
_COMMON_DEFAULTS = {
    "lr_scheduler_type": "cosine",
    WARMUP_KEY: 0.03,
    "weight_decay": 0.0,
    "num_train_epochs": 1,
}
PHASE_DEFAULTS: dict[str, dict] = {
    "projector": {"learning_rate": 1e-3, **_COMMON_DEFAULTS},
    "lora": {"learning_rate": 2e-4, **_COMMON_DEFAULTS},
    "full": {"learning_rate": 2e-5, **_COMMON_DEFAULTS},
}
# Flags that set the same knob: passing any of them keeps the phase default of the others away.
SAME_KNOB = {"warmup_ratio": "warmup_steps", "gradient_checkpointing": "activation_checkpointing"}
# Kept out of bitsandbytes quantisation in QLoRA: the vision tower and projector run in full
# precision (the projector is trained in full), lm_head as PEFT's QLoRA recipe does.
QUANTIZATION_SKIP_MODULES = ["vision_tower", "multi_modal_projector", "lm_head"]


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "A tinyvlm folder: `tinyvlm build` output for phase 2, phase 2's output for phase 3."
        }
    )
    phase: Literal["projector", "lora", "full"] = field(
        metadata={
            "help": "projector: train the projector only; lora: LoRA on the LLM + projector; full: all."
        }
    )
    freeze_vision_tower: bool = field(
        default=True, metadata={"help": "Keep the vision tower frozen (phase full only can unfreeze it)."}
    )
    lora_r: int = field(default=128, metadata={"help": "LoRA rank (LLaVA-1.5 and TinyLLaVA use 128)."})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha (LLaVA-1.5 and TinyLLaVA use 256)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_o_proj: bool = field(
        default=False, metadata={"help": "Also put LoRA on the LLM's attention o_proj."}
    )
    bits: Literal[4, 8, 16] = field(
        default=16, metadata={"help": "4 or 8: QLoRA, the LLM loaded quantised by bitsandbytes (phase lora)."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "eager, sdpa or flash_attention_2 (both sub-models)."}
    )
    labelled_logits_only: bool = field(
        default=True,
        metadata={
            "help": "Compute lm_head and the loss only where labels are set (the answers): the same loss "
            "without full-vocabulary logits for every prompt and image token."
        },
    )


@dataclass
class DataArguments:
    data_path: str = field(
        metadata={"help": "LLaVA conversation .json/.jsonl, a `save_to_disk` folder or a datasets name."}
    )
    image_folder: str | None = field(default=None, metadata={"help": "Root of the relative image paths."})
    data_split: str = field(default="train", metadata={"help": "Split of a datasets dataset."})
    image_column: str | None = field(
        default=None, metadata={"help": "Image column of a datasets dataset (default: 'images' or 'image')."}
    )
    model_max_length: int = field(
        default=2048,
        metadata={"help": "Longest sequence in tokens, image tokens included; longer rows are cut."},
    )
    strict: bool = field(
        default=False, metadata={"help": "Fail on the first bad row instead of skipping it."}
    )
    padding_free: bool = field(
        default=False,
        metadata={"help": "Pack each batch into one row with per-row position_ids instead of padding it."},
    )


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def _read_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            config = json.load(f)
        else:
            import yaml

            config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"config file {path} must hold a mapping of argument names to values")
    return config


def _flag_names(argv: list[str]) -> set[str]:
    return {token[2:].split("=")[0] for token in argv if token.startswith("--")}


def _rename_warmup_ratio(argv: list[str], config: dict) -> tuple[list[str], dict]:
    # LLaVA's scripts pass --warmup_ratio; transformers 5 only knows --warmup_steps (a float < 1 is a
    # ratio there). Same meaning, so translate instead of failing.
    if HAS_WARMUP_RATIO:
        return argv, config
    argv = [re.sub(r"^--warmup_ratio\b", "--warmup_steps", token) for token in argv]
    if "warmup_ratio" in config:
        config = {**config, "warmup_steps": config["warmup_ratio"]}
        del config["warmup_ratio"]
    return argv, config


HAS_GROUP_BY_LENGTH = "group_by_length" in {f.name for f in dataclasses.fields(TrainingArguments)}
_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_bool(value: str) -> bool:
    """True/False as a flag value (also 1/0, yes/no, any case); argparse's error otherwise."""
    if value.lower() not in _BOOL_WORDS:
        raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")
    return _BOOL_WORDS[value.lower()]


def _rename_group_by_length(argv: list[str], config: dict) -> tuple[list[str], dict]:
    # transformers 4.x's --group_by_length and LLaVA's --group_by_modality_length (our length
    # grouping groups by modality too) are 5.x's --train_sampling_strategy group_by_length.
    names = ("group_by_length", "group_by_modality_length")
    wanted, out, i = None, [], 0
    while i < len(argv):
        token = argv[i]
        name, _, value = token[2:].partition("=")
        if token.startswith("--") and name in names:
            if not value and i + 1 < len(argv) and argv[i + 1].lower() in _BOOL_WORDS:
                value, i = argv[i + 1], i + 1
            try:
                wanted = parse_bool(value) if value else True
            except argparse.ArgumentTypeError:
                raise ValueError(f"--{name} takes True or False, got {value!r}") from None
        else:
            out.append(token)
        i += 1
    config = dict(config)
    for name in names:
        if name in config:
            wanted = bool(config.pop(name)) if wanted is None else wanted
    if wanted is None:
        return argv, config
    if HAS_GROUP_BY_LENGTH:
        return [*out, "--group_by_length", str(wanted)], config
    return ([*out, "--train_sampling_strategy", "group_by_length"] if wanted else out), config


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


EXAMPLES = """examples:
  tinyvlm train --phase projector --model_name_or_path tinyvlm-init --data_path llava.json \\
      --image_folder images --output_dir out/phase2 --per_device_train_batch_size 32 --bf16 True
  tinyvlm train training/configs/phase3_lora.yaml --output_dir out/phase3   # config file + overrides
  tinyvlm merge out/phase3 --output tinyvlm-chat"""


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Command line, or a config file followed by overriding flags; phase defaults fill the rest."""
    parser = HfArgumentParser(
        (ModelArguments, DataArguments, TrainingArguments),
        prog="tinyvlm train",
        description="Phase 2 (projector), phase 3 (LoRA / QLoRA) or full training on the stock Trainer. "
        "A first argument ending in .yaml/.yml/.json is a config file; flags after it override it.",
        epilog=EXAMPLES,
        formatter_class=_HelpFormatter,
    )
    config, source = {}, "the command line"
    if argv and argv[0].endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        config, source, argv = _read_config(argv[0]), argv[0], argv[1:]
    argv, config = _rename_warmup_ratio(list(argv), config)
    argv, config = _rename_group_by_length(argv, config)
    known = {f.name for cls in parser.dataclass_types for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{source}: unknown argument(s) {unknown}; see `tinyvlm train --help`")
    explicit = set(config) | _flag_names(argv)
    explicit |= {SAME_KNOB[k] for k in explicit if k in SAME_KNOB}
    explicit |= {k for k, v in SAME_KNOB.items() if v in explicit}
    phase = _peek_phase(argv, config)
    defaults = {k: v for k, v in PHASE_DEFAULTS.get(phase, {}).items() if k not in explicit}
    parser.set_defaults(**defaults, **config)
    for action in parser._actions:  # a value from the config file counts as given
        if action.dest in config:
            action.required = False
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    return model_args, data_args, training_args


def _peek_phase(argv: list[str], config: dict) -> str | None:
    for i, token in enumerate(argv):
        if token.startswith("--phase="):
            return token.split("=", 1)[1]
        if token == "--phase" and i + 1 < len(argv):
            return argv[i + 1]
    return config.get("phase")


def check_arguments(model_args: ModelArguments, training_args: TrainingArguments) -> None:
    if training_args.output_dir is None:
        raise ValueError("--output_dir is required")
    if model_args.bits != 16 and model_args.phase != "lora":
        raise ValueError(
            f"--bits {model_args.bits} (QLoRA) needs --phase lora, got --phase {model_args.phase}"
        )
    if not model_args.freeze_vision_tower and model_args.phase != "full":
        raise ValueError(
            f"--freeze_vision_tower False needs --phase full: phase {model_args.phase} never trains the vision tower"
        )
    if os.path.isfile(os.path.join(model_args.model_name_or_path, "adapter_config.json")):
        raise ValueError(
            f"{model_args.model_name_or_path} is a LoRA adapter folder: merge it first (`tinyvlm merge`)"
        )


def enable_activation_checkpointing(model, use_reentrant: bool = False) -> None:
    """What the Trainer calls for `--gradient_checkpointing`, under the installed transformers' name
    (5.23 renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable`)."""
    kwargs = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def finish_training_arguments(training_args: TrainingArguments) -> None:
    """Settings this pipeline needs whatever the user passed."""
    # The collator's pixel_values are not dataset columns: the Trainer must not drop them.
    training_args.remove_unused_columns = False
    for name in ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"):
        if hasattr(training_args, name) and not getattr(training_args, name):
            setattr(training_args, name, {"use_reentrant": False})
    resume = training_args.resume_from_checkpoint
    if resume is not None and resume.lower() in ("true", "last"):
        training_args.resume_from_checkpoint = get_last_checkpoint(training_args.output_dir)
        if training_args.resume_from_checkpoint is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint {resume}: no checkpoint in {training_args.output_dir}"
            )
    elif resume is not None and not os.path.isdir(resume):
        raise FileNotFoundError(f"--resume_from_checkpoint {resume} does not exist")


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def _compute_dtype(training_args: TrainingArguments) -> torch.dtype:
    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32


def quantization_config(bits: int, training_args: TrainingArguments):
    """bitsandbytes 4-bit NF4 (double quantisation) or 8-bit for the LLM only."""
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=_compute_dtype(training_args),
            llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=QUANTIZATION_SKIP_MODULES)


def load_model(
    model_args: ModelArguments, training_args: TrainingArguments
) -> TinyVLMForConditionalGeneration:
    path = model_args.model_name_or_path
    # An absolute path, so that an adapter's `base_model_name_or_path` works from any directory.
    path = os.path.abspath(path) if os.path.isdir(path) else path
    kwargs = {}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.bits in (4, 8):
        kwargs["quantization_config"] = quantization_config(model_args.bits, training_args)
    model = TinyVLMForConditionalGeneration.from_pretrained(path, **kwargs)
    if model.config.model_type != "tinyvlm":
        raise ValueError(f"{path} holds a {model.config.model_type!r} model, not tinyvlm")
    return model


def lora_target_modules(lora_o_proj: bool) -> str:
    """A regex (PEFT full-matches it against module names) for the LLM's attention projections only:
    a bare ["q_proj", "v_proj"] also matches SigLIP's attention."""
    names = ["q_proj", "v_proj"] + (["o_proj"] if lora_o_proj else [])
    return rf".*language_model\..*\.self_attn\.({'|'.join(names)})"


def lora_config(model_args: ModelArguments):
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=lora_target_modules(model_args.lora_o_proj),
        modules_to_save=["multi_modal_projector"],
        bias="none",
        task_type="CAUSAL_LM",
    )


def prepare_kbit_model(model, training_args: TrainingArguments):
    """Freeze a bitsandbytes-quantised model for QLoRA, its unquantised parts left in their dtype.

    PEFT's `prepare_model_for_kbit_training` casts every unquantised weight to fp32 (the vision tower,
    projector, embeddings, norms and lm_head: 1.1 GB more for so400m + TinyLlama) and with them every
    activation, which at 8 x 2048 cancels most of what 4-bit weights save. LLaVA's QLoRA script casts
    most of it back to bf16; Llama's RMSNorm computes in fp32 whatever its weight's dtype. An fp16
    folder keeps PEFT's preparation: the Trainer's fp16 grad scaler needs fp32 trainable weights."""
    if any(p.dtype == torch.float16 for p in model.parameters()):
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(training_args.gradient_checkpointing),
            gradient_checkpointing_kwargs=training_args.gradient_checkpointing_kwargs,
        )
    model.requires_grad_(False)  # the Trainer enables checkpointing from the training arguments
    return model


def freeze_unused_vision_parts(model) -> None:
    """The SigLIP layers past `vision_feature_layer`, its post-layernorm and pooling head never run
    (the model reads a hidden state before them): frozen, so that DDP does not wait for gradients
    that never come (it would fail without `find_unused_parameters`) and AdamW keeps no state."""
    tower = model.vision_tower
    for layer in tower.encoder.layers[model.config.num_vision_layers_used :]:
        layer.requires_grad_(False)
    for name in ("post_layernorm", "head"):
        module = getattr(tower, name, None)
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)


def prepare_model(model, model_args: ModelArguments, training_args: TrainingArguments):
    """Freeze and wrap the model for the phase; returns the model to train."""
    model.labelled_logits_only = model_args.labelled_logits_only  # read in training mode only
    if model_args.phase == "projector":
        model.requires_grad_(False)
        model.multi_modal_projector.requires_grad_(True)
    elif model_args.phase == "full":
        model.requires_grad_(True)
        if model_args.freeze_vision_tower:
            model.vision_tower.requires_grad_(False)
        else:
            freeze_unused_vision_parts(model)
    else:
        from peft import get_peft_model

        if model_args.bits in (4, 8):
            model = prepare_kbit_model(model, training_args)
        model = get_peft_model(model, lora_config(model_args))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info(
        "phase %s: %d of %d parameters trainable (%.2f%%)",
        model_args.phase,
        trainable,
        total,
        100 * trainable / total,
    )
    return model


# ---------------------------------------------------------------------------------------------
# Data, record, save
# ---------------------------------------------------------------------------------------------
def build_train_dataset(data_args: DataArguments, processor, phase: str) -> SupervisedDataset:
    rows = open_rows(data_args.data_path, data_args.data_split, data_args.image_column)
    dataset = SupervisedDataset(
        rows,
        processor,
        image_folder=data_args.image_folder,
        model_max_length=data_args.model_max_length,
        strict=data_args.strict,
        require_images=phase == "projector",
        image_column=data_args.image_column,
    )
    dataset.log_summary()
    return dataset


def length_sampling(training_args: TrainingArguments) -> str | None:
    """ "group_by_length" (5.x --train_sampling_strategy, or 4.x --group_by_length True),
    "batch_rebalance" (5.x), or None: the Trainer samplers that read row lengths."""
    strategy = getattr(training_args, "train_sampling_strategy", None)
    if strategy in ("group_by_length", "batch_rebalance"):
        return strategy
    return "group_by_length" if getattr(training_args, "group_by_length", False) else None


def training_record(model_args, data_args, training_args, dataset, train_result) -> dict:
    """What the model card and a later reader need to know about this run."""
    world_size = training_args.world_size
    lora = None
    if model_args.phase == "lora":
        lora = {
            "r": model_args.lora_r,
            "alpha": model_args.lora_alpha,
            "dropout": model_args.lora_dropout,
            "target_modules": lora_target_modules(model_args.lora_o_proj),
            "modules_to_save": ["multi_modal_projector"],
            "bits": model_args.bits,
        }
    return {
        "phase": model_args.phase,
        "model_name_or_path": model_args.model_name_or_path,
        "data_path": data_args.data_path,
        "image_folder": data_args.image_folder,
        "data": dataset.summary(),
        "lora": lora,
        "freeze_vision_tower": model_args.freeze_vision_tower,
        "learning_rate": training_args.learning_rate,
        "lr_scheduler_type": str(
            getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)
        ),
        "warmup": getattr(training_args, WARMUP_KEY),
        "num_train_epochs": training_args.num_train_epochs,
        "max_steps": training_args.max_steps,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "gradient_accumulation_steps": training_args.gradient_accumulation_steps,
        "world_size": world_size,
        "global_batch_size": training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * world_size,
        "model_max_length": data_args.model_max_length,
        "padding_free": data_args.padding_free,
        "labelled_logits_only": model_args.labelled_logits_only,
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        "gradient_checkpointing": bool(training_args.gradient_checkpointing),
        "seed": training_args.seed,
        "global_step": train_result.global_step,
        "train_loss": train_result.training_loss,
        "train_runtime_s": train_result.metrics.get("train_runtime"),
        "versions": _versions(model_args.phase),
    }


def _versions(phase: str) -> dict:
    from .. import __version__

    versions = {"tinyvlm": __version__, "transformers": transformers.__version__, "torch": torch.__version__}
    if phase == "lora":
        import peft

        versions["peft"] = peft.__version__
    return versions


def save_final(trainer: Trainer, output_dir: str, record: dict, skipped: list[dict]) -> None:
    """Model (or adapter) + processor into a temporary folder, moved into `output_dir`; the training
    record last. Every rank calls this (FSDP and DeepSpeed gather the weights collectively)."""
    tmp = os.path.join(output_dir, ".final.tmp")
    trainer.save_model(tmp)
    if not trainer.is_world_process_zero():
        return
    # The pickled TrainingArguments are for Trainer resumption, not for a published folder: JSON
    # instead, and the trainer state (loss history), both read by the model card.
    if os.path.exists(os.path.join(tmp, "training_args.bin")):
        os.remove(os.path.join(tmp, "training_args.bin"))
    with open(os.path.join(tmp, "training_args.json"), "w", encoding="utf-8") as f:
        f.write(trainer.args.to_json_string())
    trainer.state.save_to_json(os.path.join(tmp, "trainer_state.json"))
    for name in os.listdir(tmp):
        target = os.path.join(output_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(tmp, name), target)
    os.rmdir(tmp)
    if skipped:
        atomic_write_text(
            os.path.join(output_dir, SKIPPED_ROWS), "".join(json.dumps(s) + "\n" for s in skipped)
        )
    atomic_write_text(os.path.join(output_dir, TRAINING_RECORD), json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    # ---- arguments -------------------------------------------------------------------------
    model_args, data_args, training_args = parse_arguments(list(sys.argv[1:] if argv is None else argv))
    check_arguments(model_args, training_args)
    finish_training_arguments(training_args)
    if training_args.should_log:  # as transformers' example scripts: Trainer's logs on the main process
        logging.set_verbosity_info()
    logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)  # before LoRA's random init

    # ---- model -----------------------------------------------------------------------------
    processor = TinyVLMProcessor.from_pretrained(model_args.model_name_or_path)
    model = prepare_model(load_model(model_args, training_args), model_args, training_args)

    # ---- data ------------------------------------------------------------------------------
    dataset = build_train_dataset(data_args, processor, model_args.phase)
    if data_args.padding_free:
        from .packing import DataCollatorForVLMPadFree

        collator = DataCollatorForVLMPadFree()
    else:
        collator = DataCollatorForVLM(pad_token_id=processor.tokenizer.pad_token_id)
    train_dataset = dataset
    sampling = length_sampling(training_args)
    if sampling is not None:
        # Grouping by length also separates image rows from text-only ones (signed lengths);
        # batch_rebalance balances token counts across ranks and needs them as they are.
        by_modality = sampling == "group_by_length"
        train_dataset = length_index(dataset, training_args.length_column_name, by_modality)
        collator = RowBuildingCollator(dataset, collator)
    if dataset.text_only_rows and training_args.ddp_find_unused_parameters is None:
        # A batch of text-only rows leaves the projector without a gradient; DDP must expect that.
        training_args.ddp_find_unused_parameters = True

    # ---- training --------------------------------------------------------------------------
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,  # saved into every checkpoint
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    dataset.log_summary()

    # ---- save ------------------------------------------------------------------------------
    record = training_record(model_args, data_args, training_args, dataset, result)
    save_final(trainer, training_args.output_dir, record, dataset.skipped)
    if trainer.is_world_process_zero():
        kind = "LoRA adapter (merge with `tinyvlm merge`)" if model_args.phase == "lora" else "tinyvlm folder"
        print(f"wrote {training_args.output_dir}: {kind}, train loss {result.training_loss:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
