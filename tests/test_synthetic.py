"""The synthetic shapes VQA generator: real PNGs, LLaVA JSON for training, VQA JSONL for phase 4."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image
from tinyvlm.training import synthetic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "shapes"
    paths = synthetic.write_synthetic_vqa(out, num_train=60, num_eval=12, seed=3, image_size=48)
    return out, paths


def test_training_rows_are_llava_conversations_with_real_pngs(dataset):
    out, paths = dataset
    rows = json.loads(open(paths["train"]).read())
    assert len(rows) == 60
    image_rows = [r for r in rows if "image" in r]
    assert image_rows, "no image rows"
    for row in image_rows:
        turns = row["conversations"]
        assert turns[0]["from"] == "human" and turns[0]["value"].startswith("<image>\n")
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert sum(t["value"].count("<image>") for t in turns) == 1
        with Image.open(out / "images" / row["image"]) as image:
            assert image.format == "PNG" and image.size == (48, 48)
    assert any(len(r["conversations"]) > 2 for r in image_rows), "no multi-turn rows"


def test_eval_records_have_ten_answers_and_bare_questions(dataset):
    out, paths = dataset
    records = [json.loads(line) for line in open(paths["eval"])]
    assert len(records) == 12
    assert {r["question_type"] for r in records} == set(synthetic.QUESTION_TYPES)
    for record in records:
        assert set(record) >= {"question_id", "image", "question", "answers", "answer_type"}
        assert len(record["answers"]) == 10
        assert record["answers"][0] in synthetic.ANSWER_OPTIONS[record["question_type"]]
        assert record["answer_type"] == ("number" if record["question_type"] == "count" else "other")
        # phase 4 appends the short-answer suffix itself
        assert synthetic.SHORT_ANSWER_SUFFIX not in record["question"]
        assert (out / "images" / record["image"]).is_file()


def test_held_out_images_are_not_training_images(dataset):
    out, paths = dataset
    train_names = {r.get("image") for r in json.loads(open(paths["train"]).read())}
    eval_names = {json.loads(line)["image"] for line in open(paths["eval"])}
    assert not train_names & eval_names


def test_same_seed_same_data(tmp_path):
    a = synthetic.write_synthetic_vqa(tmp_path / "a", num_train=10, num_eval=4, seed=1)
    b = synthetic.write_synthetic_vqa(tmp_path / "b", num_train=10, num_eval=4, seed=1)
    assert open(a["train"]).read() == open(b["train"]).read()
    assert open(a["eval"]).read() == open(b["eval"]).read()


@pytest.mark.parametrize("shape", synthetic.SHAPES)
def test_drawn_scene_matches_its_answers(shape):
    """The pixels say what the answers say: the shape's colour sits in its column, the others are empty."""
    scene = synthetic.Scene(shape=shape, colour="blue", columns=(2,))
    image = synthetic.draw_scene(scene, random.Random(0), image_size=60)
    third = 20
    coloured = [
        sum(
            1
            for x in range(c * third, (c + 1) * third)
            for y in range(60)
            if image.getpixel((x, y)) != synthetic.BACKGROUND
        )
        for c in range(3)
    ]
    assert coloured[0] == coloured[1] == 0 and coloured[2] > 30
    answers = {qtype: answer for qtype, _, answer in synthetic.questions_for(scene)}
    assert answers == {"colour": "blue", "shape": shape, "count": "1", "position": "right"}
    assert synthetic.COLOURS["blue"] in {image.getpixel((x, y)) for x in range(40, 60) for y in range(60)}


def test_chance_is_the_uniform_guess_per_question_type():
    assert synthetic.chance_accuracy(["colour", "count"]) == pytest.approx((1 / 4 + 1 / 3) / 2)
    with pytest.raises(ValueError):
        synthetic.chance_accuracy([])


def test_existing_output_is_not_overwritten_by_default(dataset):
    out, _ = dataset
    with pytest.raises(FileExistsError):
        synthetic.write_synthetic_vqa(out, num_train=2, num_eval=1)
