"""`tinyvlm eval`: data formats, predictions-only scoring, the baseline gate, and batched generation
on a tiny random model (batch 8 must give the batch-1 answers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from tinyvlm.training import evaluate_vqa
from tinyvlm.training.vqa_eval import load_predictions, load_vqa_samples, open_image

from tinyvlm import cli

COLOURS = ["red", "green", "blue", "white", "black", "yellow", "purple", "orange", "gray", "pink", "brown"]


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def vqa_jsonl(tmp_path: Path) -> Path:
    """Eleven questions on 32x32 solid-colour images; odd rows ask the colour, even rows yes/no."""
    rows = []
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{colour}.png")
        if i % 2:
            # question lengths differ so that batches need padding
            question, answers, kind = "What colour is this" + " square" * i + "?", [colour] * 10, "other"
        else:
            question, answers, kind = f"Is this {colour}?", ["yes"] * 7 + ["no"] * 3, "yes/no"
        rows.append(
            {"question_id": 100 + i, "image": f"{colour}.png", "question": question, "answers": answers,
             "answer_type": kind, "question_type": kind}
        )  # fmt: skip
    return _write_jsonl(tmp_path / "vqa.jsonl", rows)


def _perfect_predictions(data: Path, out: Path, wrong: int = 0) -> Path:
    """Reference answers as predictions, with the first `wrong` of them spoiled."""
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    preds = [
        {"question_id": r["question_id"], "answer": "zzz" if i < wrong else r["answers"][0]}
        for i, r in enumerate(rows)
    ]
    return _write_jsonl(out, preds)


# ---------------------------------------------------------------------------------------------
# Data formats
# ---------------------------------------------------------------------------------------------
def test_jsonl_rows_resolve_images_beside_the_file(vqa_jsonl):
    samples = load_vqa_samples(vqa_jsonl)
    assert len(samples) == len(COLOURS)
    assert samples[0].image == str(vqa_jsonl.parent / "red.png")
    assert open_image(samples[0].image).getpixel((0, 0)) == (255, 0, 0)
    assert samples[1].answers == ["green"] * 10


def test_jsonl_bad_row_names_file_line_and_key(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"question_id": 1, "image": "a.png", "question": "q?", "answers": ["a"]},
                                                 {"question_id": 2, "image": "a.png", "answers": ["a"]}])  # fmt: skip
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: missing key 'question'"):
        load_vqa_samples(path)
    path.write_text('{"question_id": 1, "image": "a.png", "question": "q?", "answers": "yes"}\n')
    with pytest.raises(ValueError, match=r"line 1: 'answers' must be a list"):
        load_vqa_samples(path)
    path.write_text(
        '{"question_id": 1, "image": "a.png", "question": "q?"}\n{"question_id": 1, "image": "a.png", "question": "q?"}\n'
    )
    with pytest.raises(ValueError, match="question_id 1 appears more than once"):
        load_vqa_samples(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 1: not valid JSON"):
        load_vqa_samples(path)


def test_vqav2_official_pair_with_coco_image_names(tmp_path):
    questions = {"data_subtype": "val2014", "questions": [
        {"question_id": 5, "image_id": 42, "question": "How many?"},
        {"question_id": 6, "image_id": 42, "question": "Is it?"}]}  # fmt: skip
    answers = [{"answer": "2", "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]
    annotations = {"annotations": [
        {"question_id": 5, "image_id": 42, "answers": answers, "answer_type": "number",
         "question_type": "how many", "multiple_choice_answer": "2"},
        {"question_id": 6, "image_id": 42, "answers": [dict(a, answer="yes") for a in answers],
         "answer_type": "yes/no", "question_type": "is it", "multiple_choice_answer": "yes"}]}  # fmt: skip
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    samples = load_vqa_samples(tmp_path / "q.json", tmp_path / "a.json", image_folder=tmp_path / "imgs")
    assert samples[0].image == str(tmp_path / "imgs" / "COCO_val2014_000000000042.jpg")
    assert samples[0].answers == ["2"] * 10 and samples[0].answer_type == "number"
    assert samples[1].multiple_choice_answer == "yes"

    custom = load_vqa_samples(tmp_path / "q.json", tmp_path / "a.json", image_pattern="img_{image_id}.png")
    assert custom[0].image == str(tmp_path / "img_42.png")

    del questions["data_subtype"]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    with pytest.raises(ValueError, match="--image_pattern"):
        load_vqa_samples(tmp_path / "q.json", tmp_path / "a.json")
    annotations["annotations"].pop()
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    with pytest.raises(ValueError, match=r"a\.json: no annotation for question_id 6"):
        load_vqa_samples(tmp_path / "q.json", tmp_path / "a.json", image_pattern="x{image_id}.jpg")


def test_datasets_folder_with_pil_images_decodes_lazily(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {
        "question_id": [1, 2],
        "question": ["Is it red?", "What colour?"],
        "image": [Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")],
        "answers": [[{"answer": "yes", "answer_id": 1}] * 10, [{"answer": "blue", "answer_id": 1}] * 10],
        "answer_type": ["yes/no", "other"],
    }
    features = datasets.Features({
        "question_id": datasets.Value("int64"), "question": datasets.Value("string"), "image": datasets.Image(),
        "answers": [{"answer": datasets.Value("string"), "answer_id": datasets.Value("int64")}],
        "answer_type": datasets.Value("string")})  # fmt: skip
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(
        tmp_path / "ds"
    )
    samples = load_vqa_samples(tmp_path / "ds")
    assert [s.answers[0] for s in samples] == ["yes", "blue"]
    assert callable(samples[1].image)
    assert open_image(samples[1].image).getpixel((0, 0)) == (0, 0, 255)


# ---------------------------------------------------------------------------------------------
# Predictions-only scoring and the baseline gate
# ---------------------------------------------------------------------------------------------
def test_predictions_mode_writes_metrics_atomically(vqa_jsonl, tmp_path):
    preds = _perfect_predictions(vqa_jsonl, tmp_path / "preds.jsonl", wrong=2)
    out = tmp_path / "out"
    assert (
        evaluate_vqa.main(["--predictions", str(preds), "--data", str(vqa_jsonl), "--output", str(out)]) == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_questions"] == len(COLOURS)
    assert metrics["vqa_accuracy"] == round(100 * 9 / 11, 2)
    assert metrics["exact_match"] == round(100 * 9 / 11, 2)
    assert metrics["per_answer_type"]["other"] == 80.0  # 4 of 5 colour questions right
    assert metrics["eval_config"]["source"] == "predictions"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]  # no temp file left behind


def test_predictions_missing_a_question_is_an_error(vqa_jsonl, tmp_path):
    preds = _perfect_predictions(vqa_jsonl, tmp_path / "preds.jsonl")
    preds.write_text("".join(preds.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(ValueError, match="no prediction for 1 question"):
        evaluate_vqa.main(
            ["--predictions", str(preds), "--data", str(vqa_jsonl), "--output", str(tmp_path / "o")]
        )
    assert load_predictions(preds)["101"] == "green"


def _run_with_baseline(vqa_jsonl, tmp_path, baseline: dict, *extra: str) -> int:
    preds = _perfect_predictions(vqa_jsonl, tmp_path / "preds.jsonl", wrong=2)
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    argv = ["eval", "--predictions", str(preds), "--data", str(vqa_jsonl), "--output", str(tmp_path / "out"),
            "--baseline", str(tmp_path / "baseline.json"), *extra]  # fmt: skip
    return cli.main(argv)


def test_higher_baseline_exits_nonzero_and_names_the_metric(vqa_jsonl, tmp_path, capsys):
    ours = round(100 * 9 / 11, 2)
    code = _run_with_baseline(vqa_jsonl, tmp_path, {"vqa_accuracy": ours + 1.0, "exact_match": ours})
    out = capsys.readouterr().out
    assert code == evaluate_vqa.REGRESSION_EXIT_CODE
    fell = [line for line in out.splitlines() if "FELL" in line]
    assert len(fell) == 1 and fell[0].startswith("vqa_accuracy")
    assert "-1.00" in fell[0]
    assert "exact_match" in out


def test_equal_or_lower_baseline_exits_zero(vqa_jsonl, tmp_path, capsys):
    ours = round(100 * 9 / 11, 2)
    # the official tools' own key names are understood too
    assert _run_with_baseline(vqa_jsonl, tmp_path, {"overall": ours, "perAnswerType": {"other": 80.0}}) == 0
    assert (
        _run_with_baseline(vqa_jsonl, tmp_path, {"vqa_accuracy": ours - 5, "exact_match": ours - 0.01}) == 0
    )
    assert "FELL" not in capsys.readouterr().out


def test_tolerance_allows_a_small_drop(vqa_jsonl, tmp_path):
    ours = round(100 * 9 / 11, 2)
    assert _run_with_baseline(vqa_jsonl, tmp_path, {"vqa_accuracy": ours + 0.4}, "--tolerance", "0.5") == 0
    assert _run_with_baseline(vqa_jsonl, tmp_path, {"vqa_accuracy": ours + 0.6}, "--tolerance", "0.5") == 3


def test_baseline_sharing_no_metric_is_bad_input(vqa_jsonl, tmp_path, capsys):
    assert _run_with_baseline(vqa_jsonl, tmp_path, {"bleu": 30.0}) == 1
    assert "shares no metric" in capsys.readouterr().err


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as info:
        evaluate_vqa.main(["--help"])
    assert info.value.code == 0
    assert "tinyvlm eval --model" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Generation with a tiny random model
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    build = pytest.importorskip(
        "tinyvlm.conversion.build", reason="the model builder is not in this checkout"
    )
    return Path(build.build_preset("tiny", tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return evaluate_vqa.load_model(tiny_model_dir, dtype="float32", device="cpu")


def test_batch_of_eight_gives_the_batch_of_one_answers(tiny_model, vqa_jsonl):
    model, processor = tiny_model
    samples = load_vqa_samples(vqa_jsonl)
    one = evaluate_vqa.generate_answers(model, processor, samples, batch_size=1, max_new_tokens=6)
    eight = evaluate_vqa.generate_answers(model, processor, samples, batch_size=8, max_new_tokens=6)
    assert set(one) == {str(s.question_id) for s in samples}
    assert eight == one


def test_static_cache_gives_the_dynamic_cache_answers(tiny_model_dir, vqa_jsonl, tmp_path):
    argv = ["--model", str(tiny_model_dir), "--data", str(vqa_jsonl), "--batch_size", "4",
            "--max_new_tokens", "4", "--device", "cpu"]  # fmt: skip
    predictions = {}
    for name, extra in (("dynamic", []), ("static", ["--static_cache"])):
        assert evaluate_vqa.main([*argv, "--output", str(tmp_path / name), *extra]) == 0
        predictions[name] = (tmp_path / name / "predictions.jsonl").read_text()
    assert predictions["static"] == predictions["dynamic"]


def test_prompt_puts_the_suffix_on_its_own_line_after_the_question(tiny_model):
    _, processor = tiny_model
    prompt = evaluate_vqa.build_prompt(processor, "Is it red?", evaluate_vqa.DEFAULT_PROMPT_SUFFIX)
    assert "Is it red?\nAnswer the question using a single word or phrase." in prompt
    assert "Answer the question" not in evaluate_vqa.build_prompt(processor, "Is it red?", None)


def test_eval_command_with_a_model_writes_predictions_and_metrics(tiny_model_dir, vqa_jsonl, tmp_path):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--data", str(vqa_jsonl), "--output", str(out),
            "--batch_size", "4", "--max_new_tokens", "4", "--device", "cpu"]  # fmt: skip
    assert evaluate_vqa.main(argv) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["question_id"] for r in rows] == [100 + i for i in range(len(COLOURS))]
    assert all(set(r) == {"question_id", "answer"} for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_questions"] == len(COLOURS)
    assert metrics["eval_config"]["max_new_tokens"] == 4


def test_only_higher_is_better_numbers_are_compared():
    flat = evaluate_vqa.flatten_metrics(
        {"vqa_accuracy": 50.0, "yes_no_f1": None, "yes_no_yes_ratio": 40.0, "num_questions": 9,
         "per_answer_type": {"yes/no": 70.0}, "eval_config": {"max_new_tokens": 16}}
    )  # fmt: skip
    assert flat == {"vqa_accuracy": 50.0, "per_answer_type/yes/no": 70.0}
