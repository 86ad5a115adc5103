"""Synthetic VQA data: PNG images of coloured shapes, with questions a small model can learn on a CPU.

Each scene holds 1 to 3 copies of one shape in one colour, in distinct columns (left, middle, right)
of the image. Questions ask the colour, the shape, the count, and, for single-shape scenes, the
position. Every answer is one word of a small vocabulary, so accuracy is easy to read and the
chance level is known exactly.

Design choices:
- One shape kind and one colour per scene: every question is answered by looking at the image only,
  never by resolving a reference ("the red one"), which a two-layer model trained for a minute on a
  CPU cannot be relied on to learn. The questions still need the image: none is guessable from text.
- Outputs follow the formats real runs use: LLaVA's conversation JSON for training (multi-turn rows
  and a few text-only rows included, to exercise those paths) and VQAv2-style JSONL records with ten
  reference answers for phase 4. Training rows also carry the scene (`"scene"`), which LLaVA loaders
  ignore and the demo uses to pre-train its stand-in vision tower.
- Training questions end with LLaVA-1.5's short-answer suffix, as its VQA training data does; the
  held-out questions are bare, because phase 4 appends the same suffix when it builds the prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 205, 40),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "middle", "right")
COUNTS = ("1", "2", "3")
QUESTION_TYPES = ("colour", "shape", "count", "position")
# The answers each question type can have: the chance level is 1 / len(...) per question.
ANSWER_OPTIONS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": COUNTS,
    "position": POSITIONS,
}
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
BACKGROUND = (245, 245, 245)
TEXT_ONLY_ROWS = (
    ("What colours can the shapes have?", "red, green, blue or yellow"),
    ("Which shapes can there be?", "circle, square or triangle"),
)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    columns: tuple[int, ...]  # sorted column indices, 0 = left

    @property
    def count(self) -> int:
        return len(self.columns)


def random_scene(rng: random.Random, max_shapes: int = 3) -> Scene:
    count = rng.randint(1, max_shapes)
    columns = tuple(sorted(rng.sample(range(len(POSITIONS)), count)))
    return Scene(shape=rng.choice(SHAPES), colour=rng.choice(list(COLOURS)), columns=columns)


def draw_scene(scene: Scene, rng: random.Random, image_size: int = 64) -> Image.Image:
    """An RGB image: each shape centred in its column, with a little jitter in place and size."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = image_size / len(POSITIONS)
    for column in scene.columns:
        radius = cell * rng.uniform(0.28, 0.4)
        cx = cell * (column + 0.5) + rng.uniform(-0.08, 0.08) * cell
        cy = image_size / 2 + rng.uniform(-0.25, 0.25) * image_size
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = COLOURS[scene.colour]
        if scene.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif scene.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(
                [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill
            )
    return image


def questions_for(scene: Scene) -> list[tuple[str, str, str]]:
    """(question type, question, answer) for every question the scene answers."""
    plural = scene.count > 1
    items = [
        ("colour", "What colour are the shapes?" if plural else "What colour is the shape?", scene.colour),
        ("shape", "What shape are the objects?" if plural else "What shape is the object?", scene.shape),
        ("count", "How many shapes are there?", str(scene.count)),
    ]
    if not plural:
        items.append(("position", "Where is the shape?", POSITIONS[scene.columns[0]]))
    return items


def with_suffix(question: str) -> str:
    return f"{question}\n{SHORT_ANSWER_SUFFIX}"


def chance_accuracy(question_types: list[str]) -> float:
    """Expected accuracy of a uniform guess among each question type's answers."""
    if not question_types:
        raise ValueError("chance_accuracy needs at least one question type")
    return sum(1 / len(ANSWER_OPTIONS[t]) for t in question_types) / len(question_types)


def _training_row(index: int, scene: Scene, rng: random.Random, image_name: str) -> dict:
    # One to three questions about the image: single-turn rows match phase 4, multi-turn rows
    # exercise the multi-turn label mask. The image goes in the first human turn, as in LLaVA.
    items = questions_for(scene)
    rng.shuffle(items)
    conversations = []
    for turn, (_, question, answer) in enumerate(items[: rng.randint(1, 3)]):
        prefix = "<image>\n" if turn == 0 else ""
        conversations.append({"from": "human", "value": prefix + with_suffix(question)})
        conversations.append({"from": "gpt", "value": answer})
    scene_dict = asdict(scene) | {"count": scene.count}
    return {
        "id": f"train_{index:05d}",
        "image": image_name,
        "conversations": conversations,
        "scene": scene_dict,
    }


def _text_only_row(index: int, rng: random.Random) -> dict:
    question, answer = rng.choice(TEXT_ONLY_ROWS)
    conversations = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"id": f"text_{index:05d}", "conversations": conversations}


def _eval_record(index: int, rng: random.Random, image_folder: Path, image_size: int) -> dict:
    # Question types in turn, so each type gets a quarter of the held-out set; a position question
    # needs a single-shape scene.
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    scene = random_scene(rng, max_shapes=1 if qtype == "position" else 3)
    name = f"eval_{index:05d}.png"
    draw_scene(scene, rng, image_size).save(image_folder / name)
    _, question, answer = next(item for item in questions_for(scene) if item[0] == qtype)
    return {
        "question_id": index,
        "image": name,
        "question": question,  # phase 4 appends the short-answer suffix itself
        "answers": [answer] * 10,
        "answer_type": "number" if qtype == "count" else "other",
        "question_type": qtype,
    }


def write_synthetic_vqa(
    output_dir: str | os.PathLike,
    num_train: int = 2000,
    num_eval: int = 200,
    seed: int = 0,
    image_size: int = 64,
    text_only_fraction: float = 0.02,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write `images/`, `train.json` (LLaVA conversations) and `eval.jsonl` (VQA records, held-out
    images) under `output_dir`, atomically. Returns their paths; images are relative to `images/`."""
    from tinyvlm.conversion.utils import atomic_dir

    output_dir = Path(output_dir)
    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        image_folder = tmp / "images"
        image_folder.mkdir()
        # Separate generators per split: the held-out images do not depend on num_train.
        train_rng, eval_rng = random.Random(f"{seed}-train"), random.Random(f"{seed}-eval")
        rows = []
        for i in range(num_train):
            if train_rng.random() < text_only_fraction:
                rows.append(_text_only_row(i, train_rng))
                continue
            scene = random_scene(train_rng)
            name = f"train_{i:05d}.png"
            draw_scene(scene, train_rng, image_size).save(image_folder / name)
            rows.append(_training_row(i, scene, train_rng, name))
        (tmp / "train.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        records = [_eval_record(i, eval_rng, image_folder, image_size) for i in range(num_eval)]
        (tmp / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return {
        "image_folder": str(output_dir / "images"),
        "train": str(output_dir / "train.json"),
        "eval": str(output_dir / "eval.jsonl"),
    }


def fresh_example(
    seed: int, image_size: int = 64, question_type: str = "colour"
) -> tuple[Image.Image, str, str]:
    """A scene from neither split (its own seed), with one bare question: (image, question, answer)."""
    rng = random.Random(f"{seed}-fresh")
    scene = random_scene(rng, max_shapes=1 if question_type == "position" else 3)
    _, question, answer = next(item for item in questions_for(scene) if item[0] == question_type)
    return draw_scene(scene, rng, image_size), question, answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinyvlm.training.synthetic",
        description="Write a synthetic coloured-shapes VQA dataset (LLaVA JSON + VQA JSONL).",
        epilog="example: python -m tinyvlm.training.synthetic --output data/shapes --num_train 2000",
    )
    parser.add_argument("--output", required=True)
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    paths = write_synthetic_vqa(
        args.output, args.num_train, args.num_eval, args.seed, args.image_size, overwrite=args.overwrite
    )
    print(json.dumps(paths, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
