"""VQAv2 accuracy, normalisation, exact match and yes/no scores against the official definitions
(GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py), and the shipped evaluate metric."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tinyvlm.training import vqa_eval
from tinyvlm.training.vqa_eval import (
    compute_vqa_metrics,
    exact_match,
    normalize_answer,
    process_punctuation,
    vqa_accuracy,
    yes_no_label,
    yes_no_scores,
)

METRIC_DIR = Path(vqa_eval.__file__).parent / "metrics" / "vqa_accuracy"


def _official_style_accuracy(prediction: str, answers: list[str]) -> float:
    """The official loop written out independently: answers are dicts with distinct answer_ids, each
    is left out in turn (`item != gtAnsDatum`), and min(1, matches / 3) is averaged."""
    records = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]
    if len(set(answers)) > 1:
        for record in records:
            record["answer"] = process_punctuation(record["answer"])
    predicted = normalize_answer(prediction)
    scores = []
    for left_out in records:
        others = [r for r in records if r != left_out]
        scores.append(min(1, float(len([r for r in others if r["answer"] == predicted])) / 3))
    return float(sum(scores)) / len(scores)


@pytest.mark.parametrize(
    ("matching", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (5, 1.0), (10, 1.0)]
)
def test_accuracy_steps_with_number_of_matching_annotators(matching, expected):
    answers = ["cat"] * matching + [f"other{i}" for i in range(10 - matching)]
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-9)


def test_accuracy_matches_the_official_leave_one_out_loop_on_random_cases():
    rng = random.Random(0)
    vocabulary = ["yes", "no", "2", "two", "red", "a dog", "dog", "1,000", "3.5", "t-shirt"]
    for _ in range(300):
        answers = [rng.choice(vocabulary) for _ in range(10)]
        prediction = rng.choice(vocabulary + ["Yes.", "Two", "The dog!"])
        assert vqa_accuracy(prediction, answers) == pytest.approx(
            _official_style_accuracy(prediction, answers), abs=1e-12
        )


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("two", "2"),  # number words -> digits
        ("none", "0"),
        ("a dog", "dog"),  # articles removed
        ("The Dog", "dog"),
        ("dont", "don't"),  # contractions map
        ("yes.", "yes"),  # a period not before a digit goes
        ("3.5", "3.5"),  # decimals kept
        ("1,000", "1000"),  # comma between digits removed
        ("red, white", "red white"),  # punctuation next to a space is dropped
        ("t-shirt", "t shirt"),  # punctuation inside a word becomes a space
        ("Yes!", "yes"),
        ("  yes\n", "yes"),
    ],
)
def test_normalisation_agrees_with_official_cases(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_references_get_punctuation_only_and_only_when_annotators_disagree():
    """The official tools never apply number-word/article rules to references, and leave unanimous
    references untouched: VQAv2's annotations are pre-normalised. Reproduced, not "fixed"."""
    assert vqa_accuracy("two", ["two"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10) == 1.0
    assert vqa_accuracy("yes", ["yes."] * 10) == 0.0  # unanimous: no punctuation step
    assert vqa_accuracy("yes", ["yes."] * 5 + ["no"] * 5) == 1.0  # disagreeing: "yes." -> "yes"


def test_exact_match_uses_full_normalisation_and_majority_answer():
    assert exact_match("Two dogs.", "2 dogs")
    assert not exact_match("two cats", "2 dogs")
    metrics = compute_vqa_metrics(
        ["red", "red", "blue"],
        [["red"] * 6 + ["blue"] * 4, ["blue"] * 6 + ["red"] * 4, ["green"] * 10],
        multiple_choice_answers=[None, "red", None],  # the majority would say blue; VQAv2's field wins
        ndigits=None,
    )
    assert metrics["exact_match"] == pytest.approx(200 / 3)
    # no yes/no reference: the yes/no keys are still there, as null
    assert metrics["yes_no_f1"] is None and metrics["num_yes_no_questions"] == 0


def test_yes_no_label_follows_pope():
    assert yes_no_label("No, there is none.") == "no"
    assert yes_no_label("It is not red") == "no"
    assert yes_no_label("Yes. No doubt.") == "yes"  # only the first sentence counts
    assert yes_no_label("maybe") == "yes"


def test_yes_no_scores_on_a_known_confusion_matrix():
    # tp=2, fp=1, fn=1, tn=1; the last pair has no yes/no reference and is left out
    predictions = ["yes", "yes", "yes", "no", "no", "yes"]
    references = ["yes", "yes", "no", "yes", "no", "red"]
    scores = yes_no_scores(predictions, references)
    assert scores["count"] == 5
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3)
    assert yes_no_scores(["red"], ["blue"]) is None


def test_metrics_report_percent_and_breakdowns_rounded_as_official():
    metrics = compute_vqa_metrics(
        ["yes", "2", "cat"],
        [["yes"] * 10, ["2"] + ["3"] * 9, ["dog"] * 10],
        answer_types=["yes/no", "number", "other"],
        question_types=["is the", "how many", "what is"],
    )
    assert metrics["vqa_accuracy"] == round(100 * (1.0 + 0.3 + 0.0) / 3, 2) == 43.33
    assert metrics["per_answer_type"] == {"yes/no": 100.0, "number": 30.0, "other": 0.0}
    assert metrics["per_question_type"]["how many"] == 30.0
    assert metrics["yes_no_accuracy"] == 100.0 and metrics["num_yes_no_questions"] == 1
    assert metrics["num_questions"] == 3


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 predictions for 1"):
        compute_vqa_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="answer_types"):
        compute_vqa_metrics(["a"], [["a"]], answer_types=["x", "y"])


@pytest.mark.parametrize("target", ["folder", "file"])
def test_evaluate_load_works_offline_and_equals_the_pure_function(target, monkeypatch, tmp_path):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    rng = random.Random(1)
    vocabulary = ["yes", "no", "2", "two", "red", "blue", "a cat"]
    references = [[rng.choice(vocabulary) for _ in range(10)] for _ in range(40)]
    predictions = [rng.choice(vocabulary) for _ in range(40)]
    answer_types = [rng.choice(["yes/no", "number", "other"]) for _ in range(40)]

    path = METRIC_DIR if target == "folder" else METRIC_DIR / "vqa_accuracy.py"
    metric = evaluate.load(str(path))
    result = metric.compute(predictions=predictions, references=references, answer_types=answer_types)
    expected = compute_vqa_metrics(predictions, references, answer_types=answer_types)
    assert result == expected
    assert 0 < result["vqa_accuracy"] < 100
