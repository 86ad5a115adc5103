"""The `tinyvlm` command: one entry point, one module per subcommand.

Each subcommand module exposes `main(argv: list[str]) -> int`; modules are imported lazily so that
`tinyvlm --help` stays fast and a subcommand's heavy dependencies (peft, datasets) load only when used.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("tinyvlm.training.demo", "offline end-to-end run on synthetic data (build, phases 2-4, card)"),
    "build": ("tinyvlm.conversion.build", "build a tinyvlm folder from a preset or SigLIP + LLM checkpoints"),
    "port-projector": ("tinyvlm.conversion.port_projector", "port an old Llama-3 projector checkpoint"),
    "import-llava": ("tinyvlm.conversion.llava", "convert a transformers Llava folder to tinyvlm"),
    "export-llava": ("tinyvlm.conversion.llava", "convert a tinyvlm folder to transformers Llava"),
    "train": ("tinyvlm.training.train", "phase 2 (projector), phase 3 (lora) or full training"),
    "merge": ("tinyvlm.training.merge", "merge a LoRA adapter into its base: standalone folder"),
    "eval": ("tinyvlm.training.evaluate_vqa", "phase 4: VQA metrics, predictions, baseline check"),
    "card": ("tinyvlm.model_card.card", "render the model card README.md of a folder"),
    "push": ("tinyvlm.model_card.push", "upload a folder to the Hugging Face Hub"),
    "ask": ("tinyvlm.ask", "answer one question about one image, streamed"),
    "plan-memory": ("tinyvlm.training.plan_memory", "estimate per-GPU memory for a phase"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: tinyvlm <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `tinyvlm <command> --help` for the options and an example."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tinyvlm: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    # import-llava and export-llava share a module; the others have one `main`
    entry = getattr(module, f"main_{name.replace('-', '_')}", None) or module.main
    try:
        return int(entry(rest) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        # Bad input: one line that names what is wrong, no traceback.
        print(f"tinyvlm {name}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
