"""`tinyvlm demo`: the whole pipeline offline on a CPU in a few minutes, on synthetic shapes VQA.

    data      synthetic.py: PNG scenes of coloured shapes; LLaVA JSON (train), VQA JSONL (held out)
    build     a small tinyvlm (SigLIP + Llama shapes) with the offline tokenizer
    stand-ins pre-train the tiny vision tower and LLM, standing in for pretrained SigLIP/TinyLlama
    phase 2   `tinyvlm train --phase projector`       (the same code path as a real run)
    phase 3   `tinyvlm train --phase lora`, `tinyvlm merge`
    phase 4   `tinyvlm eval` after each stage: untrained, phase 2, phase 3
    card      `tinyvlm card` on the merged folder
    reload    AutoModelForImageTextToText + AutoProcessor (trust_remote_code) answer a fresh image

Design choices:
- A real run starts from pretrained SigLIP and TinyLlama. Random towers would leave phase 2 nothing
  to align, so the demo first pre-trains small stand-ins, and says so:
    * the vision tower with a linear probe on the scene labels (colour, shape, count, occupied
      columns), on the exact features the projector reads;
    * the LLM on the chat format, answering from a written scene description ("red circle 2 left")
      placed where the image tokens will go. It so learns to answer from context, as a pretrained
      LLM reads a caption; phase 2 then teaches the projector to turn the image into such context.
  The projector stays random until phase 2, so "untrained" is the model phase 2 starts from.
- Hyper-parameters differ from a real run's where the model size demands it (a 128-wide LLM needs a
  larger learning rate and a smaller LoRA rank); they are passed as flags, visibly.
- `--quick` runs every step on a few rows, for tests: the numbers mean nothing there.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers.utils import logging

from ..conversion.build import build_preset_model
from ..conversion.utils import atomic_write_text, save_model_folder
from . import synthetic
from .data import Conversation, DataCollatorForVLM, tokenize_conversation

logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class DemoSize:
    num_train: int
    num_eval: int
    vision_steps: int
    llm_steps: int
    phase2_epochs: float
    phase3_epochs: float
    max_steps: int = -1  # caps each phase (quick mode)


FULL = DemoSize(
    num_train=2000, num_eval=200, vision_steps=300, llm_steps=400, phase2_epochs=2, phase3_epochs=2
)
QUICK = DemoSize(
    num_train=48, num_eval=8, vision_steps=3, llm_steps=3, phase2_epochs=1, phase3_epochs=1, max_steps=2
)
IMAGE_SIZE = 64
# A model the CPU trains in seconds: 4x4 = 16 image tokens, a 3-layer vision tower (its last layer
# unused, as SigLIP's in LLaVA: vision_feature_layer -2), a 2-layer 128-wide LLM.
VISION = {"image_size": IMAGE_SIZE, "patch_size": 16, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 3, "num_attention_heads": 4}  # fmt: skip
TEXT = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}  # fmt: skip
BATCH_SIZE = 32


# ---------------------------------------------------------------------------------------------
# Stand-ins for the pretrained towers
# ---------------------------------------------------------------------------------------------
def _scene_targets(scenes: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "colour": torch.tensor([list(synthetic.COLOURS).index(s["colour"]) for s in scenes]),
        "shape": torch.tensor([synthetic.SHAPES.index(s["shape"]) for s in scenes]),
        "count": torch.tensor([s["count"] - 1 for s in scenes]),
        "columns": torch.tensor([[float(c in s["columns"]) for c in range(3)] for s in scenes]),
    }


def pretrain_vision_tower(
    model, processor, rows: list[dict], image_folder: str, steps: int, seed: int
) -> float:
    """Train the vision tower with a linear probe on the scene labels; the probe reads the features
    the projector will read (captured at its input). Returns the probe's accuracy on held-back rows."""
    rows = [r for r in rows if "scene" in r]
    images = [Image.open(os.path.join(image_folder, r["image"])).convert("RGB") for r in rows]
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    targets = _scene_targets([r["scene"] for r in rows])
    captured = {}
    hook = model.multi_modal_projector.register_forward_pre_hook(lambda _, args: captured.update(x=args[0]))
    seq, hidden = model.config.image_seq_length, model.config.vision_config.hidden_size
    probe = nn.Linear(seq * hidden, 4 + 3 + 3 + 3)
    optimizer = torch.optim.AdamW([*model.vision_tower.parameters(), *probe.parameters()], lr=2e-3)
    held_back = max(1, len(rows) // 10)
    generator = torch.Generator().manual_seed(seed)

    def probe_logits(index):
        model.get_image_features(pixel_values[index])
        logits = probe(captured["x"].flatten(1))  # (batch, seq * hidden) -> (batch, 13)
        return logits[:, :4], logits[:, 4:7], logits[:, 7:10], logits[:, 10:]

    model.train()
    for _ in range(steps):
        index = torch.randint(held_back, len(rows), (64,), generator=generator)
        colour, shape, count, columns = probe_logits(index)
        loss = (
            nn.functional.cross_entropy(colour, targets["colour"][index])
            + nn.functional.cross_entropy(shape, targets["shape"][index])
            + nn.functional.cross_entropy(count, targets["count"][index])
            + nn.functional.binary_cross_entropy_with_logits(columns, targets["columns"][index])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)  # the projector ran too; it must stay as initialised
    with torch.no_grad():
        index = torch.arange(held_back)
        colour, shape, count, _ = probe_logits(index)
        hits = [
            (colour.argmax(-1) == targets["colour"][index]),
            (shape.argmax(-1) == targets["shape"][index]),
        ]
        hits.append(count.argmax(-1) == targets["count"][index])
    hook.remove()
    return float(torch.stack(hits).float().mean())


def describe(scene: dict, rng: random.Random) -> str:
    """The scene in words, in random order: "2 red left circle right"."""
    words = [scene["colour"], scene["shape"], str(scene["count"])]
    words += [synthetic.POSITIONS[c] for c in scene["columns"]]
    rng.shuffle(words)
    return " ".join(words)


def _described_turns(row: dict, index: int, rng: random.Random) -> list[Conversation]:
    """Each question of the row as a single-turn conversation, with the scene description where the
    image tokens will go (short sequences: the stand-in trains in seconds)."""
    from .data import normalize_row

    turns = row["conversations"]
    conversations = []
    for k in range(0, len(turns), 2):
        question = turns[k]["value"].replace("<image>\n", "")
        if "scene" in row:
            question = f"{describe(row['scene'], rng)}\n{question}"
        raw = {"conversations": [{"from": "human", "value": question}, dict(turns[k + 1])]}
        conversations.append(normalize_row(raw, index))
    return conversations


def pretrain_language_model(model, processor, rows: list[dict], steps: int, seed: int) -> float:
    """Train the LLM on the chat format, answering from scene descriptions (and the text-only rows).
    Returns the final training loss."""
    rng = random.Random(seed)
    examples = []
    for index, row in enumerate(rows):
        for conv in _described_turns(row, index, rng):
            input_ids, labels = tokenize_conversation(processor, conv, None)
            examples.append({"input_ids": input_ids, "labels": labels})
    collate = DataCollatorForVLM(pad_token_id=processor.tokenizer.pad_token_id)
    language_model = model.language_model
    optimizer = torch.optim.AdamW(language_model.parameters(), lr=3e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=3e-3, total_steps=max(steps, 1), pct_start=0.1
    )
    language_model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = collate(rng.sample(examples, min(BATCH_SIZE, len(examples))))
        loss = language_model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return float(loss.detach())


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------
def build_base(out: Path, paths: dict, size: DemoSize, seed: int) -> Path:
    """A tinyvlm folder with pre-trained stand-in towers and a random projector."""
    model, processor = build_preset_model("tiny", seed=seed, vision=VISION, text=TEXT)
    rows = json.loads(Path(paths["train"]).read_text(encoding="utf-8"))
    torch.manual_seed(seed)
    probe_accuracy = pretrain_vision_tower(
        model, processor, rows, paths["image_folder"], size.vision_steps, seed
    )
    print(f"  stand-in vision tower: linear probe accuracy {probe_accuracy:.2f} (colour, shape, count)")
    llm_loss = pretrain_language_model(model, processor, rows, size.llm_steps, seed)
    print(f"  stand-in LLM: answer loss {llm_loss:.3f} on scene descriptions")
    base = out / "base"
    shutil.rmtree(base, ignore_errors=True)
    save_model_folder(model.eval(), processor, base)
    return base


def _train(
    phase: str, model: Path, output: Path, paths: dict, size: DemoSize, seed: int, extra: list[str]
) -> None:
    from .train import main as train_main

    shutil.rmtree(output, ignore_errors=True)
    epochs = size.phase2_epochs if phase == "projector" else size.phase3_epochs
    argv = [
        "--phase", phase, "--model_name_or_path", str(model), "--output_dir", str(output),
        "--data_path", paths["train"], "--image_folder", paths["image_folder"],
        "--per_device_train_batch_size", str(BATCH_SIZE), "--num_train_epochs", str(epochs),
        "--max_steps", str(size.max_steps), "--seed", str(seed), "--logging_steps", "25",
        "--save_strategy", "epoch", "--save_total_limit", "1", "--report_to", "none",
        "--log_level", "warning", "--disable_tqdm", "True", "--dataloader_pin_memory", "False",
        "--dataloader_num_workers", "0" if size.max_steps > 0 else "1",
        *extra,
    ]  # fmt: skip
    print(f"  tinyvlm train {' '.join(argv)}")
    train_main(argv)


def evaluate(model: Path, paths: dict, output: Path) -> float:
    """Phase 4 (`tinyvlm eval`) on the held-out split; VQA accuracy in [0, 1]."""
    from .evaluate_vqa import main as eval_main

    argv = ["--model", str(model), "--data", paths["eval"], "--image_folder", paths["image_folder"],
            "--output", str(output), "--batch_size", "50", "--dataset_name", "synthetic-shapes-vqa"]  # fmt: skip
    eval_main(argv)
    metrics = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
    return metrics["vqa_accuracy"] / 100


def answer_fresh_image(folder: Path, out: Path, seed: int) -> tuple[str, str, str]:
    """Reload through the Auto classes, as a Hub user would, and answer a question about a new image."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .evaluate_vqa import DEFAULT_PROMPT_SUFFIX, build_prompt

    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    image, question, expected = synthetic.fresh_example(seed + 1000, IMAGE_SIZE, question_type="colour")
    image.save(out / "fresh.png")
    prompt = build_prompt(processor, question, DEFAULT_PROMPT_SUFFIX)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    reply = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    return question, reply, expected


def print_table(metrics: dict) -> None:
    rows = [
        ("untrained (stand-in towers, random projector)", metrics["untrained"]),
        ("after phase 2 (projector warm-up)", metrics["phase2"]),
        ("after phase 3 (LoRA, merged)", metrics["phase3"]),
        ("chance (uniform guess per question type)", metrics["chance"]),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\n{'stage'.ljust(width)}  VQA accuracy")
    print(f"{'-' * width}  ------------")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value:12.3f}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyvlm demo",
        description="Offline end-to-end run on synthetic shapes VQA: data, stand-in towers, phase 2, "
        "phase 3 + merge, phase 4 after each stage, model card, reload through the Auto classes.",
        epilog="example:\n  tinyvlm demo --output demo_out        # a few minutes on a CPU\n"
        "  tinyvlm demo --output /tmp/d --quick  # every step on a few rows (for tests)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default="demo_out", help="folder for everything the demo writes")
    parser.add_argument(
        "--quick", action="store_true", help="a few rows and steps: checks the path, not the numbers"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    size, out = (QUICK if args.quick else FULL), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    # One compute thread, data loading in one worker process: on a 2-core machine any background load
    # makes two OpenMP threads spin-wait on each other (measured 6x slower per step than one thread).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = run(out, size, args.seed)
    finally:
        torch.set_num_threads(threads)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print_table(metrics)
    print(f"\nwrote {out / 'metrics.json'}; model in {out / 'final'}")
    return 0


def run(out: Path, size: DemoSize, seed: int) -> dict[str, float]:
    start = time.time()

    def stage(number: int, text: str) -> None:
        print(f"[{number}/7, {time.time() - start:3.0f} s] {text}")

    stage(1, f"synthetic data: {size.num_train} training rows, {size.num_eval} held-out questions")
    paths = synthetic.write_synthetic_vqa(
        out / "data", size.num_train, size.num_eval, seed=seed, image_size=IMAGE_SIZE, overwrite=True
    )
    stage(2, "build a small tinyvlm and pre-train stand-ins for its towers")
    print("  (a real run starts from pretrained SigLIP and TinyLlama instead of these stand-ins)")
    base = build_base(out, paths, size, seed)
    metrics = {"untrained": evaluate(base, paths, out / "eval" / "untrained")}

    stage(3, "phase 2: projector warm-up")
    _train("projector", base, out / "phase2", paths, size, seed, ["--learning_rate", "1e-3"])
    metrics["phase2"] = evaluate(out / "phase2", paths, out / "eval" / "phase2")

    stage(4, "phase 3: LoRA on the LLM (r 16 for a 128-wide model) + the projector, then merge")
    lora = ["--learning_rate", "2e-3", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.0"]
    _train("lora", out / "phase2", out / "phase3", paths, size, seed, lora)
    from .merge import merge_adapter

    merge_adapter(str(out / "phase3"), str(out / "final"), overwrite=True)
    stage(5, "phase 4: validation on the held-out split")
    metrics["phase3"] = evaluate(out / "final", paths, out / "eval" / "phase3")
    shutil.copy(out / "eval" / "phase3" / "metrics.json", out / "final" / "metrics.json")
    records = [json.loads(line) for line in Path(paths["eval"]).read_text(encoding="utf-8").splitlines()]
    metrics["chance"] = synthetic.chance_accuracy([r["question_type"] for r in records])

    stage(6, "model card")
    from ..model_card.card import write_card

    print(f"  wrote {write_card(out / 'final')}")
    stage(7, "reload through AutoModelForImageTextToText (trust_remote_code) and ask about a fresh image")
    question, reply, expected = answer_fresh_image(out / "final", out, seed)
    print(f"  {out / 'fresh.png'}: {question!r} -> {reply!r} (truth: {expected!r})")
    print(f"  done in {time.time() - start:.0f} s")
    return metrics


if __name__ == "__main__":
    raise SystemExit(main())
