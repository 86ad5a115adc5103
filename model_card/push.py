"""`tinyvlm push`: upload a tinyvlm model or adapter folder to the Hugging Face Hub.

Design choices:
- An allow list, not a deny list: only what loading the model needs (safetensors weights and
  their index, configs, the remote-code files, processor and tokenizer files, adapter files) plus
  the card and metrics go up. Optimizer, scheduler and RNG states, pickles and `checkpoint-*`
  folders, which a training output folder is full of, stay home.
- One commit with explicit `CommitOperationAdd`s for exactly the planned files, so what `--dry-run`
  lists is what is sent.
- Pickled weights are refused: they run code when loaded and transformers prefers safetensors.
- The token is never touched here: `HfApi()` resolves `HF_TOKEN` or the login cache itself, so it
  cannot end up in a file, the card or a log line.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

ALLOWED_NAMES = frozenset(
    {
        "config.json", "generation_config.json", "model.safetensors.index.json",
        "processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "chat_template.json", "chat_template.jinja", "tokenizer.model",
        "added_tokens.json", "adapter_config.json", "README.md", "metrics.json",
    }
)  # fmt: skip
ALLOWED_PATTERNS = ("*.safetensors", "*.py")  # top level only: weights (and adapter weights), remote code
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")
# Why a file is left out, first match wins; the reason is shown by --dry-run.
EXCLUDE_REASONS = (
    (("optimizer*", "scheduler*", "rng_state*", "scaler*"), "optimizer/scheduler/RNG state"),
    (("training_args.bin",), "training arguments (pickled)"),
    (PICKLE_PATTERNS, "pickled weights"),
)

EPILOG = """\
examples:
  tinyvlm push out/merged --repo-id my-org/tinyvlm-siglip-tinyllama --dry-run
  tinyvlm push out/merged --repo-id my-org/tinyvlm-siglip-tinyllama --private
  tinyvlm push out/lora --repo-id my-org/tinyvlm-lora --revision phase3 --commit-message "phase 3 adapter"

The token comes from HF_TOKEN or `hf auth login`; it is never written anywhere.
"""


@dataclass
class UploadPlan:
    """What goes up (path in repo, size in bytes) and what stays (path, reason)."""

    folder: Path
    included: list[tuple[str, int]] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.included)


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _exclusion_reason(name: str) -> str:
    for patterns, reason in EXCLUDE_REASONS:
        if _matches(name, patterns):
            return reason
    return "not needed to load the model"


def _folder_reason(name: str) -> str:
    return (
        "training checkpoint" if name.startswith("checkpoint-") else "sub-folder (only top-level files go up)"
    )


def plan_upload(folder: str | os.PathLike) -> UploadPlan:
    """Sort the folder's entries into what goes up and what stays, without touching the network."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    plan = UploadPlan(folder)
    for entry in sorted(folder.iterdir(), key=lambda path: path.name):
        if entry.is_dir():
            plan.excluded.append((f"{entry.name}/", _folder_reason(entry.name)))
        elif entry.name.startswith("."):
            plan.excluded.append((entry.name, "hidden file"))
        elif entry.is_file() and (entry.name in ALLOWED_NAMES or _matches(entry.name, ALLOWED_PATTERNS)):
            plan.included.append((entry.name, entry.stat().st_size))
        else:
            plan.excluded.append((entry.name, _exclusion_reason(entry.name)))
    return plan


def check_plan(plan: UploadPlan) -> None:
    """Refuse folders without safetensors weights, and sharded weights whose index names a missing shard."""
    names = {name for name, _ in plan.included}
    weights = [name for name in names if name.endswith(".safetensors")]
    if not weights:
        pickled = [name for name, reason in plan.excluded if reason == "pickled weights"]
        if pickled:
            raise ValueError(
                f"{plan.folder} has pickled weights only ({', '.join(pickled)}); re-save it with "
                "`model.save_pretrained(folder, safe_serialization=True)` and push the safetensors"
            )
        raise ValueError(f"{plan.folder} has no *.safetensors weights: nothing worth pushing")
    if "model.safetensors.index.json" in names:
        index_path = plan.folder / "model.safetensors.index.json"
        try:
            shards = set(json.loads(index_path.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise ValueError(f"{index_path}: not a safetensors index with a 'weight_map' ({err})") from err
        missing = sorted(shards - names)
        if missing:
            raise ValueError(f"{index_path} names shard(s) missing from the folder: {', '.join(missing)}")
    if "README.md" not in names:
        logger.warning(
            "%s has no README.md; run `tinyvlm card %s` first for a model card", plan.folder, plan.folder
        )


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def format_plan(plan: UploadPlan, dry_run: bool = True) -> str:
    width = max([len(name) for name, _ in plan.included + plan.excluded] + [4])
    verb = "would upload" if dry_run else "uploading"
    lines = [f"{verb} {len(plan.included)} file(s), {human_size(plan.total_bytes)}:"]
    lines += [f"  {name.ljust(width)}  {human_size(size):>9}" for name, size in plan.included]
    lines.append(f"left out {len(plan.excluded)}:" if plan.excluded else "left out: nothing")
    lines += [f"  {name.ljust(width)}  {reason}" for name, reason in plan.excluded]
    return "\n".join(lines)


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
):
    """Create the repo if needed and upload the planned files in one commit; returns the commit info."""
    import huggingface_hub

    plan = plan_upload(folder)
    check_plan(plan)
    readme = plan.folder / "README.md"
    if readme.is_file() and repo_id not in readme.read_text(encoding="utf-8"):
        logger.warning("README.md does not mention %s; `tinyvlm card %s --repo-id %s` makes its snippet load from the Hub",
                       repo_id, plan.folder, repo_id)  # fmt: skip
    # No token argument anywhere: huggingface_hub reads HF_TOKEN or its login cache itself.
    api = api if api is not None else huggingface_hub.HfApi()
    api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    operations = [
        huggingface_hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(plan.folder / name))
        for name, _ in plan.included
    ]
    message = commit_message or f"Upload tinyvlm model ({len(operations)} files)"
    return api.create_commit(
        repo_id, operations=operations, commit_message=message, repo_type="model", revision=revision
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tinyvlm push",
        description="Upload a tinyvlm model or adapter folder to the Hugging Face Hub (weights, configs, "
        "code, processor, card, metrics; never optimizer states or pickles).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="model or adapter folder")
    parser.add_argument("--repo-id", dest="repo_id", required=True, help="owner/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="branch to push to (created if missing)")
    parser.add_argument("--commit-message", dest="commit_message", help="commit message")
    parser.add_argument(
        "--dry-run", dest="dry_run", action="store_true", help="list what would go up and stop"
    )
    args = parser.parse_args(argv)

    plan = plan_upload(args.folder)
    check_plan(plan)
    print(format_plan(plan, dry_run=args.dry_run))
    if args.dry_run:
        return 0
    info = push_folder(args.folder, args.repo_id, args.private, args.revision, args.commit_message)
    print(f"pushed to {getattr(info, 'commit_url', None) or args.repo_id}")
    return 0
