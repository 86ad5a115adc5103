"""`tinyvlm eval`: phase 4 validation, predictions and metrics, and the check against a baseline.

Design choices:
- Greedy, batched generation with left padding, the prompt built by the processor's own chat
  template, so the eval sees exactly what a user of the Auto classes sees.
- LLaVA's short-answer suffix ("Answer the question using a single word or phrase.") goes on a new
  line after the question by default, as LLaVA's VQAv2 evaluation does.
- `--predictions` scores answers produced elsewhere (the old Llama-3 system, an earlier run)
  without loading a model.
- A baseline is compared metric by metric; any that falls more than `--tolerance` points below it
  makes the command exit 3, so a CI job or slurm script can gate on it.
- Outputs are written to a temporary file in the output folder and moved into place, so a killed
  run never leaves a half-written metrics.json behind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging

from ..conversion.utils import atomic_write_text
from .vqa_eval import VQASample, load_predictions, load_vqa_samples, open_image, score_samples

logger = logging.get_logger(__name__)

DEFAULT_PROMPT_SUFFIX = "Answer the question using a single word or phrase."
# lmms-eval's VQAv2 task generates at most 16 tokens for single word/phrase answers.
DEFAULT_MAX_NEW_TOKENS = 16
REGRESSION_EXIT_CODE = 3
# Names the official tools (VQAEval.accuracy) use for what we call otherwise.
BASELINE_ALIASES = {
    "overall": "vqa_accuracy",
    "perAnswerType": "per_answer_type",
    "perQuestionType": "per_question_type",
}
# Entries of metrics.json where "higher is better" does not hold: never compared with a baseline.
NOT_COMPARED = frozenset({"eval_config", "yes_no_yes_ratio"})

EPILOG = """\
examples:
  tinyvlm eval --model out/merged --data v2_OpenEnded_mscoco_val2014_questions.json \\
      --annotations v2_mscoco_val2014_annotations.json --image_folder coco/val2014 \\
      --output out/eval --baseline llama3_metrics.json --tolerance 0.5 --batch_size 16
  tinyvlm eval --model out/merged --data vqa.jsonl --output out/eval
  tinyvlm eval --predictions old_system/predictions.jsonl --data vqa.jsonl --output out/eval_old

exit status: 0 ok, 1 bad input, 3 a metric fell more than --tolerance points below the baseline.
"""


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def write_predictions(path: str | os.PathLike, samples: Sequence[VQASample], answers: Mapping[str, str]):
    rows = (
        json.dumps({"question_id": s.question_id, "answer": answers[str(s.question_id)]}) for s in samples
    )
    return atomic_write_text(path, "".join(row + "\n" for row in rows))


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
def build_prompt(processor: Any, question: str, prompt_suffix: str | None) -> str:
    """The chat-formatted prompt for one question, the suffix on a new line after it."""
    text = f"{question}\n{prompt_suffix}" if prompt_suffix else question
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _model_inputs(processor: Any, model: Any, images: list[Any], prompts: list[str]):
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def generate_answers(
    model: Any,
    processor: Any,
    samples: Sequence[VQASample],
    batch_size: int = 8,
    prompt_suffix: str | None = DEFAULT_PROMPT_SUFFIX,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    generate_kwargs: dict | None = None,
) -> dict[str, str]:
    """Greedy answers keyed by str(question_id), `batch_size` questions per `generate` call;
    `generate_kwargs` go to every call (e.g. `cache_implementation="static"`)."""
    import torch
    from tqdm.auto import tqdm

    # Batched generation needs the prompts flush right, next to the first generated token.
    processor.tokenizer.padding_side = "left"
    pad_token_id = processor.tokenizer.pad_token_id
    answers: dict[str, str] = {}
    model.eval()
    with tqdm(total=len(samples), desc="eval", unit="q") as progress, torch.inference_mode():
        for batch in _batches(samples, batch_size):
            images = [open_image(sample.image) for sample in batch]
            prompts = [build_prompt(processor, sample.question, prompt_suffix) for sample in batch]
            inputs = _model_inputs(processor, model, images, prompts)
            output = model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_token_id,
                **(generate_kwargs or {}),
            )
            # (batch, prompt + new) -> (batch, new): decode only what the model wrote.
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            for sample, text in zip(batch, processor.batch_decode(new_tokens, skip_special_tokens=True)):
                answers[str(sample.question_id)] = text.strip()
            progress.update(len(batch))
    return answers


def load_model(model_dir: str | os.PathLike, dtype: str = "auto", device: str | None = None):
    """Model and processor through the Auto classes, as a Hub user would load them."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if not Path(model_dir).is_dir():
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True, dtype=torch_dtype)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), processor


def _check_images(samples: Sequence[VQASample]) -> None:
    """Fail before hours of generation, not at the first missing image half-way through."""
    missing = [s for s in samples if isinstance(s.image, str) and not os.path.exists(s.image)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) not found, e.g. {missing[0].image} (question_id {missing[0].question_id!r}); "
            "check --image_folder / --image_pattern"
        )


# ---------------------------------------------------------------------------------------------
# Baseline comparison
# ---------------------------------------------------------------------------------------------
def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric metrics as {"vqa_accuracy": x, "per_answer_type/yes/no": y, ...}; counts (num_*),
    the eval settings and non-numbers are left out."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = BASELINE_ALIASES.get(key, key) if not prefix else key
        if not prefix and name in NOT_COMPARED:
            continue
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{prefix}{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not name.startswith("num_"):
            if math.isfinite(value):
                flat[f"{prefix}{name}"] = float(value)
    return flat


def compare_with_baseline(ours: Mapping[str, Any], baseline: Mapping[str, Any], tolerance: float = 0.0):
    """Rows (metric, baseline, ours, delta, fell) for every metric present in both, top-level
    metrics first; `fell` when ours is more than `tolerance` points below the baseline."""
    mine, theirs = flatten_metrics(ours), flatten_metrics(baseline)
    shared = [name for name in mine if name in theirs]
    if not shared:
        raise ValueError(f"the baseline shares no metric with ours (baseline has {sorted(theirs)[:8]})")
    shared.sort(key=lambda name: ("/" in name, name))
    rows = []
    for name in shared:
        delta = mine[name] - theirs[name]
        # A hair of slack so that equal numbers read back from JSON never count as a regression.
        rows.append((name, theirs[name], mine[name], delta, delta < -tolerance - 1e-9))
    return rows


def format_comparison(rows: Sequence[tuple[str, float, float, float, bool]], tolerance: float) -> str:
    width = max(len("metric"), *(len(row[0]) for row in rows))
    lines = [f"{'metric'.ljust(width)}  {'baseline':>9}  {'ours':>9}  {'delta':>8}"]
    for name, base, mine, delta, fell in rows:
        flag = f"  FELL (> {tolerance:g} below)" if fell else ""
        lines.append(f"{name.ljust(width)}  {base:9.2f}  {mine:9.2f}  {delta:+8.2f}{flag}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyvlm eval",
        description="Phase 4 validation: answer VQA questions (or score given answers), write "
        "predictions.jsonl and metrics.json, compare with a baseline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="tinyvlm model folder to generate answers with")
    source.add_argument(
        "--predictions", help="score these answers (JSONL or JSON list) instead of generating"
    )
    parser.add_argument(
        "--data", required=True, help="VQAv2 questions JSON, JSONL/JSON records or a datasets folder"
    )
    parser.add_argument("--annotations", help="VQAv2 annotations JSON that goes with --data questions")
    parser.add_argument(
        "--image_folder", help="where relative image paths / COCO files are (default: beside --data)"
    )
    parser.add_argument(
        "--image_pattern", help="VQAv2 image file from image_id, e.g. 'COCO_val2014_{image_id:012d}.jpg'"
    )
    parser.add_argument("--split", help="split of a datasets folder holding several")
    parser.add_argument("--output", required=True, help="folder for predictions.jsonl and metrics.json")
    parser.add_argument("--baseline", help="metrics JSON of the system to match or beat")
    parser.add_argument(
        "--tolerance", type=float, default=0.0, help="points a metric may fall below the baseline"
    )
    parser.add_argument("--batch_size", type=int, default=8)
    suffix = parser.add_mutually_exclusive_group()
    suffix.add_argument(
        "--prompt_suffix", default=DEFAULT_PROMPT_SUFFIX, help="line appended after each question"
    )
    suffix.add_argument("--no_prompt_suffix", action="store_true", help="ask the bare question")
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--static_cache",
        action="store_true",
        help="generate with a static KV cache; on CUDA transformers then compiles the decode step "
        "(the first batch pays for compiling)",
    )
    parser.add_argument(
        "--dataset_name", help="name recorded in metrics.json for the model card (default: --data's name)"
    )
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    if args.tolerance < 0:
        raise ValueError(f"--tolerance must be zero or more points, got {args.tolerance}")
    for name in ("annotations", "baseline"):
        value = getattr(args, name)
        if value and not Path(value).is_file():
            raise FileNotFoundError(f"--{name} file not found: {value}")


def _eval_config(args: argparse.Namespace, prompt_suffix: str | None) -> dict[str, Any]:
    """What produced the numbers, for the model card; file names only, no local paths."""
    data = Path(args.data)
    config = {
        "dataset_name": args.dataset_name or (data.stem if data.is_file() else data.name),
        "data": data.name,
        "split": args.split,
        "source": "model" if args.model else "predictions",
    }
    if args.model:
        config.update(
            prompt_suffix=prompt_suffix, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
        )
    return config


def _summary(metrics: Mapping[str, Any]) -> str:
    keys = ("vqa_accuracy", "exact_match", "yes_no_accuracy", "yes_no_f1", "num_questions")
    parts = [f"{key} {metrics[key]:g}" for key in keys if metrics.get(key) is not None]
    parts += [f"{kind} {value:g}" for kind, value in metrics.get("per_answer_type", {}).items()]
    return ", ".join(parts)


def _baseline_check(metrics: Mapping[str, Any], baseline_path: str, tolerance: float) -> int:
    with open(baseline_path, encoding="utf-8") as handle:
        try:
            baseline = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{baseline_path}: not valid JSON ({err})") from err
    if not isinstance(baseline, Mapping):
        raise ValueError(f"{baseline_path}: expected a JSON object of metrics")
    if baseline.get("num_questions") not in (None, metrics.get("num_questions")):
        logger.warning(
            "baseline %s scored %s questions, we scored %s: the sets differ",
            baseline_path, baseline["num_questions"], metrics.get("num_questions"),
        )  # fmt: skip
    rows = compare_with_baseline(metrics, baseline, tolerance)
    print(format_comparison(rows, tolerance))
    fell = [row[0] for row in rows if row[4]]
    if fell:
        print(
            f"regression: {len(fell)} metric(s) fell more than {tolerance:g} points below {baseline_path}: {', '.join(fell)}"
        )
        return REGRESSION_EXIT_CODE
    print(f"no metric fell more than {tolerance:g} points below the baseline")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    prompt_suffix = None if args.no_prompt_suffix else args.prompt_suffix
    output = Path(args.output)

    # ---- data
    samples = load_vqa_samples(
        args.data,
        args.annotations,
        args.image_folder,
        args.image_pattern,
        args.split,
        need_images=bool(args.model),
    )
    logger.info("loaded %d questions from %s", len(samples), args.data)

    # ---- answers: generated, or read from a file
    if args.model:
        _check_images(samples)
        model, processor = load_model(args.model, args.dtype, args.device)
        answers = generate_answers(
            model,
            processor,
            samples,
            args.batch_size,
            prompt_suffix,
            args.max_new_tokens,
            generate_kwargs={"cache_implementation": "static"} if args.static_cache else None,
        )
        print(f"wrote {write_predictions(output / 'predictions.jsonl', samples, answers)}")
    else:
        answers = load_predictions(args.predictions)
        extra = len(set(answers) - {str(s.question_id) for s in samples})
        if extra:
            logger.warning(
                "%d prediction(s) in %s have no question in %s; ignored", extra, args.predictions, args.data
            )

    # ---- metrics
    if not any(sample.answers for sample in samples):
        if not args.model:
            raise ValueError(
                f"{args.data} has no reference answers: nothing to score the predictions against"
            )
        logger.warning("%s has no reference answers: wrote predictions only", args.data)
        return 0
    metrics = score_samples(samples, answers)
    metrics["eval_config"] = _eval_config(args, prompt_suffix)
    write_metrics(output / "metrics.json", metrics)
    print(f"{_summary(metrics)}\nwrote {output / 'metrics.json'}")

    # ---- baseline
    return _baseline_check(metrics, args.baseline, args.tolerance) if args.baseline else 0
