"""`tinyvlm card`: render a folder's README.md (its Hub model card) from the files in that folder.

Design choices:
- Every number in the card is read from the folder: `config.json` (architecture),
  `processor_config.json` (image tokens), the safetensors headers (parameter counts, without loading
  a tensor), `training_args.json` / `trainer_state.json` / `tinyvlm_training.json` (training),
  `adapter_config.json` (LoRA) and `metrics.json` (`tinyvlm eval`). The template holds prose only, so
  the card cannot drift from the model the way hand-copied README numbers do.
- Any of those files may be missing; the card then says what is not known rather than failing.
- The YAML front matter is built with huggingface_hub's `ModelCardData`, so it is in the shape the
  Hub validates (`base_model`, `pipeline_tag`, `model-index`, ...).
- Only Hub repo ids go into `base_model` / `datasets`: a local path there is rejected by the Hub.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..conversion.utils import atomic_write_text

logger = logging.get_logger(__name__)

CARD_FILES = {
    "config": "config.json",
    "adapter_config": "adapter_config.json",
    "generation_config": "generation_config.json",
    "processor_config": "processor_config.json",
    "training_args": "training_args.json",
    "trainer_state": "trainer_state.json",
    "tinyvlm_training": "tinyvlm_training.json",
    "metrics": "metrics.json",
}
TEMPLATE = Path(__file__).with_name("card_template.md.jinja")
DEFAULT_LICENSE = "apache-2.0"  # SigLIP and TinyLlama are both Apache-2.0
# The snippet needs some bound when generation_config.json sets none; a code default, not a claim.
SNIPPET_MAX_NEW_TOKENS = 32
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
COMPONENT_LABELS = {
    "vision_tower": "vision tower",
    "multi_modal_projector": "projector",
    "language_model": "language model",
}
DISPLAY_NAMES = {
    "siglip_vision_model": "SigLIP",
    "siglip": "SigLIP",
    "llama": "Llama",
    "clip_vision_model": "CLIP",
}
PHASES = {
    "projector": "Training phase: projector warm-up. The vision tower and the language model were frozen; "
    "only the MLP projector was trained.",
    "lora": "Training phase: LoRA. Low-rank adapters on the language model were trained together with the "
    "projector.",
    "full": "Training phase: full fine-tuning. The language model's weights were trained directly, not "
    "through adapters.",
}
MERGED = "The LoRA adapters were then merged into the base weights: this is a standalone model."
TRAINING_ARGS = [
    ("learning rate", "learning_rate"), ("epochs", "num_train_epochs"), ("max steps", "max_steps"),
    ("batch size per device", "per_device_train_batch_size"),
    ("gradient accumulation steps", "gradient_accumulation_steps"), ("scheduler", "lr_scheduler_type"),
    ("warmup ratio", "warmup_ratio"), ("warmup steps", "warmup_steps"), ("weight decay", "weight_decay"),
    ("optimizer", "optim"), ("bf16", "bf16"), ("fp16", "fp16"), ("seed", "seed"),
    ("gradient checkpointing", "gradient_checkpointing"),
]  # fmt: skip
TRAINER_STATE = [
    ("optimizer steps", "global_step"), ("epochs completed", "epoch"), ("batch size (trainer)", "train_batch_size"),
]  # fmt: skip
HEADLINE_METRICS = [
    ("VQA accuracy", "vqa_accuracy"), ("exact match", "exact_match"), ("yes/no accuracy", "yes_no_accuracy"),
    ("yes/no precision", "yes_no_precision"), ("yes/no recall", "yes_no_recall"), ("yes/no F1", "yes_no_f1"),
]  # fmt: skip
EVAL_SETTINGS = [
    ("dataset", "dataset_name"), ("data file", "data"), ("split", "split"), ("prompt suffix", "prompt_suffix"),
    ("max new tokens", "max_new_tokens"), ("batch size", "batch_size"),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Reading the folder
# ---------------------------------------------------------------------------------------------
def read_card_inputs(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed JSON files the card is made from; None for each one that is absent."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    inputs: dict[str, Any] = {}
    for key, name in CARD_FILES.items():
        path = folder / name
        if not path.is_file():
            inputs[key] = None
            continue
        try:
            inputs[key] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(inputs[key], Mapping):
            raise ValueError(f"{path}: expected a JSON object, got {type(inputs[key]).__name__}")
    if inputs["config"] is None and inputs["adapter_config"] is None:
        raise FileNotFoundError(
            f"{folder}: neither config.json nor adapter_config.json; is this a model folder?"
        )
    model_type = (inputs["config"] or {}).get("model_type", "tinyvlm")
    if model_type != "tinyvlm":
        raise ValueError(f"{folder / 'config.json'}: model_type is {model_type!r}, expected 'tinyvlm'")
    return inputs


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header (8-byte length, then JSON); no tensor is read."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return {name: entry["shape"] for name, entry in header.items()}


def parameter_counts(folder: str | os.PathLike) -> dict[str, int]:
    """Parameters per top-level module (vision_tower, multi_modal_projector, language_model, or
    "adapter") summed over the folder's safetensors files."""
    counts: dict[str, int] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        adapter = path.name.startswith("adapter_model")
        for name, shape in _safetensors_shapes(path).items():
            component = "adapter" if adapter else name.removeprefix("model.").split(".")[0]
            counts[component] = counts.get(component, 0) + math.prod(shape)
    return counts


def _hub_ids(values: Iterable[Any]) -> list[str]:
    """Values that look like Hub repo ids ("owner/name"), in order, without duplicates or local paths."""
    found: list[str] = []
    for value in values:
        if (
            isinstance(value, str)
            and _HUB_ID.match(value)
            and not os.path.exists(value)
            and value not in found
        ):
            found.append(value)
    return found


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        return list(value.values())
    return list(value) if isinstance(value, (list, tuple)) else [value]


def base_models(inputs: Mapping[str, Any]) -> list[str]:
    """Hub ids of the models this one derives from: the config's `base_models` hint, then the LLM,
    then the vision tower, then an adapter's base."""
    config = inputs["config"] or {}
    candidates = _as_list(config.get("base_models"))
    candidates += [(config.get(key) or {}).get("_name_or_path") for key in ("text_config", "vision_config")]
    candidates += _as_list((inputs["tinyvlm_training"] or {}).get("base_model"))
    candidates.append((inputs["adapter_config"] or {}).get("base_model_name_or_path"))
    return _hub_ids(candidates)


def _sub_config_name(sub_config: Mapping[str, Any]) -> str:
    name = sub_config.get("_name_or_path")
    if isinstance(name, str) and _hub_ids([name]):
        return f"[{name}](https://huggingface.co/{name})"
    model_type = sub_config.get("model_type", "unknown")
    return DISPLAY_NAMES.get(model_type, model_type)


# ---------------------------------------------------------------------------------------------
# Card sections (pure: inputs -> rows)
# ---------------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(item) for item in value)
    return str(value).replace("|", "\\|").replace("\n", "\\n")


def architecture_rows(inputs: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    config = inputs["config"] or {}
    vision, text = config.get("vision_config") or {}, config.get("text_config") or {}
    image_tokens = (inputs["processor_config"] or {}).get("image_seq_length")
    if image_tokens is None and vision.get("image_size") and vision.get("patch_size"):
        image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2  # SigLIP has no CLS token
    projector = [vision.get("hidden_size"), config.get("projector_hidden_size"), text.get("hidden_size")]
    rows = [
        ("vision tower", "type", vision.get("model_type")),
        ("vision tower", "image size", vision.get("image_size")),
        ("vision tower", "patch size", vision.get("patch_size")),
        ("vision tower", "hidden size", vision.get("hidden_size")),
        ("vision tower", "layers", vision.get("num_hidden_layers")),
        ("vision tower", "feature layer", config.get("vision_feature_layer")),
        ("vision tower", "image tokens per image", image_tokens),
        (
            "projector",
            "sizes (in -> hidden -> out)",
            " -> ".join(map(str, projector)) if all(projector) else None,
        ),
        ("projector", "activation", config.get("projector_hidden_act")),
        ("language model", "type", text.get("model_type")),
        ("language model", "hidden size", text.get("hidden_size")),
        ("language model", "layers", text.get("num_hidden_layers")),
        ("language model", "attention heads", text.get("num_attention_heads")),
        ("language model", "key/value heads", text.get("num_key_value_heads")),
        ("language model", "vocabulary", text.get("vocab_size")),
        ("language model", "context length", text.get("max_position_embeddings")),
        ("language model", "image token id", config.get("image_token_id")),
    ]
    return [(component, setting, _fmt(value)) for component, setting, value in rows if value is not None]


def parameter_rows(counts: Mapping[str, int]) -> list[tuple[str, str]]:
    if not counts:
        return []
    order = list(COMPONENT_LABELS)  # data-flow order: vision tower, projector, language model
    names = sorted(counts, key=lambda name: (order.index(name) if name in order else len(order), name))
    rows = [(COMPONENT_LABELS.get(name, name), f"{counts[name]:,}") for name in names]
    return rows + [("total", f"{sum(counts.values()):,}")] if len(rows) > 1 else rows


def adapter_rows(adapter: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if not adapter:
        return []
    keys = [("type", "peft_type"), ("rank", "r"), ("alpha", "lora_alpha"), ("dropout", "lora_dropout"),
            ("target modules", "target_modules"), ("trained in full", "modules_to_save")]  # fmt: skip
    return [(label, _fmt(adapter[key])) for label, key in keys if adapter.get(key) not in (None, [])]


def _is_local_path(value: Any) -> bool:
    return isinstance(value, str) and (
        value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value) is not None
    )


def _training_record_rows(record: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Scalars (and lists of scalars) of tinyvlm_training.json; local paths mean nothing on the Hub."""
    rows = []
    for key, value in record.items():
        if isinstance(value, Mapping):
            rows += _training_record_rows(value, f"{prefix}{key} / ")
        elif key in ("max_steps", "warmup_steps") and isinstance(value, (int, float)) and value <= 0:
            continue  # the Trainer's "not set"
        elif value is not None and value != [] and not _is_local_path(value):
            if not isinstance(value, list) or all(not isinstance(item, (Mapping, list)) for item in value):
                rows.append((f"{prefix}{key}".replace("_", " "), _fmt(value)))
    return rows


def _last_logged(log_history: list[Any], key: str) -> Any:
    for entry in reversed(log_history):
        if isinstance(entry, Mapping) and key in entry:
            return entry[key]
    return None


def training_rows(inputs: Mapping[str, Any]) -> list[tuple[str, str]]:
    record = inputs["tinyvlm_training"] or {}
    rows = _training_record_rows(record)
    args = inputs["training_args"] or {}
    for label, key in TRAINING_ARGS:
        value = None if key in record else args.get(key)  # the record already has it
        # max_steps = -1 and warmup_steps = 0 are the Trainer's "not set"
        if value is not None and not (key in ("max_steps", "warmup_steps") and value <= 0):
            rows.append((label, _fmt(value)))
    state = inputs["trainer_state"] or {}
    rows += [(label, _fmt(state[key])) for label, key in TRAINER_STATE if state.get(key) is not None]
    history = state.get("log_history") or []
    for label, key in (
        ("final logged loss", "loss"),
        ("mean training loss", "train_loss"),
        ("runtime (s)", "train_runtime"),
    ):
        value = _last_logged(history, key)
        if value is not None:
            rows.append((label, _fmt(value)))
    return rows


def phase_summary(inputs: Mapping[str, Any]) -> str:
    """One paragraph on what was trained, from tinyvlm_training.json (written by `tinyvlm train`,
    extended with a `merged` entry by `tinyvlm merge`) or, lacking it, from adapter_config.json."""
    record = inputs["tinyvlm_training"] or {}
    phase = record.get("phase")
    if phase is None and inputs["adapter_config"] is not None:
        phase = "lora"
    if phase is None:
        return ""
    parts = [PHASES.get(str(phase), f"Training phase: {phase}.")]
    if phase != "projector" and record.get("freeze_vision_tower") is not None:
        parts.append(
            "The vision tower stayed frozen."
            if record["freeze_vision_tower"]
            else "The vision tower was trained too."
        )
    if record.get("merged"):
        parts.append(MERGED)
    return " ".join(parts)


def metric_rows(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Evaluation tables from metrics.json (empty lists when there is none)."""
    metrics = metrics or {}
    settings = metrics.get("eval_config") or {}
    eval_rows = [
        (label, _fmt(settings[key])) for label, key in EVAL_SETTINGS if settings.get(key) is not None
    ]
    counts = (("questions", "num_questions"), ("yes/no questions", "num_yes_no_questions"))
    eval_rows += [(label, _fmt(metrics[key])) for label, key in counts if key in metrics]
    return {
        "metric_rows": [
            (label, _fmt(metrics[key])) for label, key in HEADLINE_METRICS if metrics.get(key) is not None
        ],
        "answer_type_rows": [
            (kind, _fmt(value)) for kind, value in (metrics.get("per_answer_type") or {}).items()
        ],
        "question_type_rows": [
            (kind, _fmt(value)) for kind, value in (metrics.get("per_question_type") or {}).items()
        ],
        "eval_rows": eval_rows,
        "eval_dataset": settings.get("dataset_name") or "the evaluation set",
        "eval_source": "answers read from a predictions file"
        if settings.get("source") == "predictions"
        else "greedy answers generated by this model",
    }


def eval_results(metrics: Mapping[str, Any] | None):
    """`model-index` entries for the Hub, one per headline metric present."""
    from huggingface_hub import EvalResult

    if not metrics:
        return []
    settings = metrics.get("eval_config") or {}
    dataset = str(settings.get("dataset_name") or "vqa")
    return [
        EvalResult(
            task_type="visual-question-answering",
            task_name="Visual Question Answering",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=settings.get("split"),
            metric_type=key,
            metric_name=label,
            metric_value=metrics[key],
        )
        for label, key in HEADLINE_METRICS
        if isinstance(metrics.get(key), (int, float))
    ]


def usage_snippet(inputs: Mapping[str, Any], path: str, has_processor: bool = True) -> str:
    """Python that loads the model from `path` and answers one question about a blank image."""
    vision = (inputs["config"] or {}).get("vision_config") or {}
    size = vision.get("image_size") or (inputs["processor_config"] or {}).get("size", {}).get("height")
    max_tokens = (
        ""
        if (inputs["generation_config"] or {}).get("max_new_tokens")
        else f", max_new_tokens={SNIPPET_MAX_NEW_TOKENS}"
    )
    lines = ["from PIL import Image", "from transformers import AutoModelForImageTextToText, AutoProcessor"]
    adapter = inputs["adapter_config"] if inputs["config"] is None else None
    if adapter is not None:
        base = adapter.get("base_model_name_or_path")
        lines += ["from peft import PeftModel", "", f"path = {json.dumps(path)}", f"base = {json.dumps(base)}",
                  "model = PeftModel.from_pretrained(",
                  "    AutoModelForImageTextToText.from_pretrained(base, trust_remote_code=True), path",
                  ")",
                  f"processor = AutoProcessor.from_pretrained({'path' if has_processor else 'base'}, trust_remote_code=True)"]  # fmt: skip
    else:
        lines += ["", f"path = {json.dumps(path)}",
                  "model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)",
                  "processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)"]  # fmt: skip
    lines += [
        "",
        f'image = Image.new("RGB", ({size}, {size}), "white")  # or Image.open("photo.jpg")',
        'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]',
        "prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)",
        'inputs = processor(images=[image], text=[prompt], return_tensors="pt")',
        f"output = model.generate(**inputs, do_sample=False{max_tokens})",
        'print(processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])',
    ]
    return "\n".join(lines)


def _tags(inputs: Mapping[str, Any]) -> list[str]:
    config = inputs["config"] or {}
    tags = ["tinyvlm", "llava", "vision-language-model", "image-text-to-text", "custom_code"]
    for key in ("vision_config", "text_config"):
        model_type = (config.get(key) or {}).get("model_type")
        if model_type:
            tags.append(DISPLAY_NAMES.get(model_type, model_type).lower())
    if inputs["adapter_config"] is not None:
        tags += ["peft", "lora"]
    return tags


def card_data(inputs: Mapping[str, Any], model_name: str, license: str):
    """The front matter, validated by huggingface_hub's own ModelCardData."""
    from huggingface_hub import ModelCardData

    training = inputs["tinyvlm_training"] or {}
    adapter_only = inputs["config"] is None
    return ModelCardData(
        license=training.get("license") or license,
        base_model=base_models(inputs) or None,
        pipeline_tag="image-text-to-text",
        library_name="peft" if adapter_only else "transformers",
        tags=_tags(inputs),
        datasets=_hub_ids(_as_list(training.get("datasets")) + _as_list(training.get("data_path"))) or None,
        model_name=model_name,
        eval_results=eval_results(inputs["metrics"]) or None,
    )


# ---------------------------------------------------------------------------------------------
# Rendering and writing
# ---------------------------------------------------------------------------------------------
def _has_processor_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("processor_config.json", "tokenizer_config.json"))


def render_card(folder: str | os.PathLike, repo_id: str | None = None, license: str = DEFAULT_LICENSE) -> str:
    """README.md text for `folder`: front matter + body. The usage snippet loads `repo_id` when
    given (the card is about to be pushed), else the folder path itself."""
    import jinja2

    folder = Path(folder)
    inputs = read_card_inputs(folder)
    config = inputs["config"] or {}
    model_name = repo_id.split("/")[-1] if repo_id else folder.resolve().name
    context = {
        "model_name": model_name,
        "vision_name": _sub_config_name(config["vision_config"])
        if config.get("vision_config")
        else "pretrained",
        "text_name": _sub_config_name(config["text_config"]) if config.get("text_config") else "pretrained",
        "phase_summary": phase_summary(inputs),
        "usage_snippet": usage_snippet(inputs, repo_id or str(folder), _has_processor_files(folder)),
        "architecture_rows": architecture_rows(inputs),
        "parameter_rows": parameter_rows(parameter_counts(folder)),
        "adapter_rows": adapter_rows(inputs["adapter_config"]),
        "adapter_base": (inputs["adapter_config"] or {}).get("base_model_name_or_path"),
        "training_rows": training_rows(inputs),
        **metric_rows(inputs["metrics"]),
    }
    environment = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    body = environment.from_string(TEMPLATE.read_text(encoding="utf-8")).render(**context)
    body = re.sub(r"\n{3,}", "\n\n", body)  # optional sections leave runs of blank lines
    front_matter = card_data(inputs, model_name, license).to_yaml()
    return f"---\n{front_matter}\n---\n\n{body}"


def write_card(folder: str | os.PathLike, repo_id: str | None = None, license: str = DEFAULT_LICENSE) -> Path:
    """Render and write `folder/README.md` atomically; returns its path."""
    path = Path(folder) / "README.md"
    atomic_write_text(path, render_card(folder, repo_id=repo_id, license=license))
    logger.info("wrote %s", path)
    return path


EPILOG = """\
examples:
  tinyvlm card out/merged
  tinyvlm card out/merged --repo-id my-org/tinyvlm-siglip-tinyllama   # snippet loads from the Hub

Reads config.json, processor_config.json, *.safetensors headers, training_args.json,
trainer_state.json, tinyvlm_training.json, adapter_config.json and metrics.json (whichever exist)
and writes README.md in the same folder.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tinyvlm card",
        description="Render the model card (README.md) of a tinyvlm folder from the files in it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="model or adapter folder")
    parser.add_argument("--repo-id", dest="repo_id", help="Hub repo id the usage snippet should load")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help="license id for the front matter")
    parser.add_argument("--stdout", action="store_true", help="print the card instead of writing README.md")
    args = parser.parse_args(argv)
    if args.stdout:
        print(render_card(args.folder, repo_id=args.repo_id, license=args.license))
        return 0
    print(f"wrote {write_card(args.folder, repo_id=args.repo_id, license=args.license)}")
    return 0
