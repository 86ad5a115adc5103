"""Phase 4 validation: VQA data loading and the metrics, as pure functions.

Design choices:
- VQAv2 accuracy follows the official evaluation (GT-Vision-Lab/VQA,
  PythonEvaluationTools/vqaEvaluation/vqaEval.py, python 3 version) step by step, quirks included,
  so that our number can be set beside a number the official tools produced:
    * the prediction is normalised (punctuation, then number words, articles and contractions);
    * the ten reference answers only get the punctuation step, and only when they disagree;
    * accuracy of one question = mean over the ten leave-one-out subsets of
      min(#matches among the other nine / 3, 1): 0, 0.3, 0.6, 0.9, 1.0 for 0, 1, 2, 3, 4+ matches;
    * overall and per-type figures are percentages rounded to 2 places (their `n=2`).
- Exact match (GQA style) compares fully normalised strings with one reference answer: the
  `multiple_choice_answer` when the data has one, else the most common answer.
- Yes/no accuracy and F1 follow POPE: over questions whose reference is yes or no, a prediction
  containing the word "no" or "not" in its first sentence is "no", anything else "yes"; "yes" is
  the positive class.
- Loaders accept VQAv2's question + annotation pair, JSON/JSONL records and `datasets` folders, and
  raise ValueError naming the file and the row or key at fault.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------
# Normalisation tables, reproduced as data from the official vqaEval.py (python 3 version).
# A few keys can never match (capitalised "Im", "Ive", ... are looked up after lower-casing) and
# "somebody'd" maps backwards; they are kept because the official scores are computed with them.
# ---------------------------------------------------------------------------------------------
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")  # fmt: skip
# The official lookbehind is mistyped as `(?!<=\d)`, a lookahead that always holds, so in effect a
# period is removed unless a digit follows it ("3.5" stays, "yes." and "a.m" lose it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official code passes re.UNICODE (32) where `sub` expects `count`: at most 32 periods go.
_PERIOD_STRIP_COUNT = re.UNICODE

YES_NO = ("yes", "no")


def process_punctuation(text: str) -> str:
    """The official `processPunctuation`: drop or space out punctuation, drop non-decimal periods."""
    out = text
    # A digit-comma-digit anywhere ("1,000") makes every listed mark vanish instead of becoming a space.
    has_number_comma = _COMMA_STRIP.search(text) is not None
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or has_number_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The official `processDigitArticle`: lower-case, number words to digits, no articles, contractions."""
    words = [MANUAL_MAP.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """Normalise a predicted answer exactly as the official tools do before matching."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def normalize_references(answers: Sequence[str]) -> list[str]:
    """Reference answers as the official tools compare them: punctuation step only, and only when
    the annotators disagree (VQAv2's annotation files are already normalised otherwise)."""
    if len(set(answers)) > 1:
        return [process_punctuation(answer) for answer in answers]
    return list(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction in [0, 1]: the mean over the leave-one-out subsets of the
    references of min(#matches among the others / 3, 1)."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer, got none")
    predicted = normalize_answer(prediction)
    matches = [reference == predicted for reference in normalize_references(answers)]
    total = sum(matches)
    # Leaving out answer i leaves `total - matches[i]` matches among the others.
    per_subset = [min(1.0, float(total - matched) / 3) for matched in matches]
    return float(sum(per_subset)) / len(per_subset)


def reference_answer(answers: Sequence[str], multiple_choice_answer: str | None = None) -> str:
    """The single answer exact match compares with: VQAv2's `multiple_choice_answer` when given,
    else the most common normalised answer (ties go to the one seen first)."""
    if multiple_choice_answer:
        return normalize_answer(multiple_choice_answer)
    if not answers:
        raise ValueError("reference_answer needs at least one answer, got none")
    counts = Counter(normalize_answer(answer) for answer in answers)
    return counts.most_common(1)[0][0]


def exact_match(prediction: str, reference: str) -> bool:
    """GQA-style exact match: both sides fully normalised, then compared as strings."""
    return normalize_answer(prediction) == normalize_answer(reference)


def yes_no_label(prediction: str) -> str:
    """POPE's reading of a free-form answer: "no" when its first sentence has the word no/not."""
    first_sentence = prediction.split(".")[0].replace(",", "")
    words = first_sentence.split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _percent(value: float, ndigits: int | None) -> float:
    value = 100.0 * value
    return round(value, ndigits) if ndigits is not None else value


def _mean(values: Sequence[float]) -> float:
    return float(sum(values)) / len(values)


def yes_no_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float] | None:
    """POPE accuracy, precision, recall, F1 (fractions) and the share of "yes" predictions, over the
    pairs whose normalised reference is yes or no; None when there is no such pair."""
    pairs = [(yes_no_label(p), r) for p, r in zip(predictions, references) if r in YES_NO]
    if not pairs:
        return None
    tp = sum(p == "yes" and r == "yes" for p, r in pairs)
    fp = sum(p == "yes" and r == "no" for p, r in pairs)
    fn = sum(p == "no" and r == "yes" for p, r in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": _mean([float(p == r) for p, r in pairs]),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": _mean([float(p == "yes") for p, _ in pairs]),
        "count": len(pairs),
    }


def _grouped_percent(scores: Sequence[float], groups: Sequence[str | None] | None, ndigits: int | None):
    if groups is None:
        return {}
    by_group: dict[str, list[float]] = {}
    for score, group in zip(scores, groups):
        if group is not None:
            by_group.setdefault(str(group), []).append(score)
    return {group: _percent(_mean(values), ndigits) for group, values in by_group.items()}


def compute_vqa_metrics(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    answer_types: Sequence[str | None] | None = None,
    question_types: Sequence[str | None] | None = None,
    multiple_choice_answers: Sequence[str | None] | None = None,
    ndigits: int | None = 2,
) -> dict[str, Any]:
    """All phase 4 metrics, in percent (rounded to `ndigits` as the official tools do; None keeps
    full precision). `references[i]` holds the annotators' answers to question i."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    for name, column in (("answer_types", answer_types), ("question_types", question_types)):
        if column is not None and len(column) != len(predictions):
            raise ValueError(f"{name} has {len(column)} entries for {len(predictions)} predictions")
    mc_answers = multiple_choice_answers or [None] * len(predictions)
    accuracies = [vqa_accuracy(p, refs) for p, refs in zip(predictions, references)]
    single = [reference_answer(refs, mc) for refs, mc in zip(references, mc_answers)]
    matches = [float(normalize_answer(p) == r) for p, r in zip(predictions, single)]
    metrics: dict[str, Any] = {
        "vqa_accuracy": _percent(_mean(accuracies), ndigits),
        "exact_match": _percent(_mean(matches), ndigits),
    }
    # Always present, null without yes/no questions, so readers of metrics.json need no key checks.
    yes_no = yes_no_scores(predictions, single)
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        metrics[f"yes_no_{key}"] = _percent(yes_no[key], ndigits) if yes_no else None
    metrics["num_yes_no_questions"] = yes_no["count"] if yes_no else 0
    metrics["per_answer_type"] = _grouped_percent(accuracies, answer_types, ndigits)
    metrics["per_question_type"] = _grouped_percent(accuracies, question_types, ndigits)
    metrics["num_questions"] = len(predictions)
    return metrics


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@dataclass
class VQASample:
    """One question. `image` is a file path, a PIL image or a zero-argument callable returning one
    (datasets folders decode lazily); `answers` is empty for test splits without annotations."""

    question_id: int | str
    question: str
    image: Any
    answers: list[str]
    answer_type: str | None = None
    question_type: str | None = None
    multiple_choice_answer: str | None = None


def score_samples(samples: Sequence[VQASample], predictions: Mapping[str, str], ndigits: int | None = 2):
    """Metrics of `predictions` (keyed by str(question_id)) over `samples`, which all need answers."""
    missing_answers = [s.question_id for s in samples if not s.answers]
    if missing_answers:
        raise ValueError(f"question {missing_answers[0]!r} has no reference answers: cannot score")
    missing = [s.question_id for s in samples if str(s.question_id) not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question(s), e.g. question_id {missing[0]!r}")
    return compute_vqa_metrics(
        [predictions[str(s.question_id)] for s in samples],
        [s.answers for s in samples],
        answer_types=[s.answer_type for s in samples],
        question_types=[s.question_type for s in samples],
        multiple_choice_answers=[s.multiple_choice_answer for s in samples],
        ndigits=ndigits,
    )


def _answer_list(value: Any, where: str) -> list[str]:
    """Answers as strings from a list of strings or of {"answer": ...} dicts (VQAv2, lmms-lab)."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(
            f"{where}: 'answers' must be a list of strings or of {{'answer': ...}}, got {value!r}"
        )
    answers = []
    for item in value:
        text = item.get("answer") if isinstance(item, Mapping) else item
        if not isinstance(text, str):
            raise ValueError(
                f"{where}: each answer must be a string or have an 'answer' string, got {item!r}"
            )
        answers.append(text)
    return answers


def _resolve_image(value: Any, base: Path, where: str) -> Any:
    if isinstance(value, str):
        return value if os.path.isabs(value) else str(base / value)
    if isinstance(value, Mapping) and value.get("path"):
        return _resolve_image(value["path"], base, where)
    raise ValueError(f"{where}: 'image' must be a file path, got {value!r}")


def _sample_from_record(record: Any, where: str, image_base: Path | None) -> VQASample:
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("question_id", "question"):
        if key not in record:
            raise ValueError(f"{where}: missing key {key!r}")
    if not isinstance(record["question"], str) or not record["question"].strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string")
    answers = record.get("answers")
    if answers is None and record.get("answer") is not None:
        answers = [record["answer"]]  # GQA style: one answer
    image = record.get("image")
    if image_base is not None:
        if image is None:
            raise ValueError(f"{where}: missing key 'image'")
        image = _resolve_image(image, image_base, where)
    return VQASample(
        question_id=record["question_id"],
        question=record["question"],
        image=image,
        answers=_answer_list(answers, where),
        answer_type=record.get("answer_type"),
        question_type=record.get("question_type"),
        multiple_choice_answer=record.get("multiple_choice_answer"),
    )


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Rows of a JSON Lines file; blank lines are skipped, a bad line raises with its number."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({err})") from err
    return rows


def _check_unique(samples: Sequence[VQASample], path: Path) -> list[VQASample]:
    seen: set[str] = set()
    for sample in samples:
        key = str(sample.question_id)
        if key in seen:
            raise ValueError(f"{path}: question_id {sample.question_id!r} appears more than once")
        seen.add(key)
    if not samples:
        raise ValueError(f"{path}: no questions")
    return list(samples)


def load_records(path: str | os.PathLike, image_folder: str | os.PathLike | None = None, need_images=True):
    """Samples from a JSONL (or JSON list) of {question_id, image, question, answers, ...}; relative
    image paths resolve against `image_folder`, else against the data file's folder."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows, label = read_jsonl(path), "line"
    else:
        rows, label = _read_json(path), "row"
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of question records")
    base = Path(image_folder) if image_folder else path.parent
    samples = []
    for number, row in enumerate(rows, start=1):
        where = f"{path}, {label} {number}"
        samples.append(_sample_from_record(row, where, base if need_images else None))
    return _check_unique(samples, path)


# VQAv2's questions file names its image split in `data_subtype`; test-dev images live in test2015.
_COCO_SPLIT = re.compile(r"(train|val|test)20\d\d")


def coco_image_pattern(questions: Mapping[str, Any], path: Path) -> str:
    """COCO file naming `COCO_<split>_<12-digit image_id>.jpg`, split from the questions file."""
    subtype = str(questions.get("data_subtype") or "")
    found = _COCO_SPLIT.search(subtype) or _COCO_SPLIT.search(path.name)
    if found is None:
        raise ValueError(
            f"{path}: cannot tell the COCO image split (no 'data_subtype' key and none in the file name); "
            "pass --image_pattern, e.g. 'COCO_val2014_{image_id:012d}.jpg'"
        )
    return f"COCO_{found.group(0)}_{{image_id:012d}}.jpg"


def _annotations_by_id(path: Path) -> dict[str, Mapping[str, Any]]:
    data = _read_json(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path}: expected VQAv2 annotations, a JSON object with an 'annotations' list")
    by_id = {}
    for number, row in enumerate(data["annotations"], start=1):
        if not isinstance(row, Mapping) or "question_id" not in row or "answers" not in row:
            raise ValueError(f"{path}, annotation {number}: needs 'question_id' and 'answers'")
        by_id[str(row["question_id"])] = row
    return by_id


def load_vqav2(
    questions_path, annotations_path=None, image_folder=None, image_pattern=None, need_images=True
):
    """Samples from VQAv2's official questions JSON (+ annotations JSON for scoring)."""
    questions_path = Path(questions_path)
    data = _read_json(questions_path)
    if not isinstance(data, Mapping) or not isinstance(data.get("questions"), list):
        raise ValueError(f"{questions_path}: expected a JSON object with a 'questions' list")
    annotations = _annotations_by_id(Path(annotations_path)) if annotations_path else {}
    if need_images and image_pattern is None:
        image_pattern = coco_image_pattern(data, questions_path)
    base = Path(image_folder) if image_folder else questions_path.parent
    samples = []
    for number, row in enumerate(data["questions"], start=1):
        where = f"{questions_path}, question {number}"
        if not isinstance(row, Mapping) or not {"question_id", "image_id", "question"} <= set(row):
            raise ValueError(f"{where}: needs 'question_id', 'image_id' and 'question'")
        note = annotations.get(str(row["question_id"]))
        if annotations and note is None:
            raise ValueError(f"{annotations_path}: no annotation for question_id {row['question_id']!r}")
        note = note or {}
        image = str(base / image_pattern.format(image_id=int(row["image_id"]))) if need_images else None
        samples.append(
            VQASample(
                question_id=row["question_id"],
                question=row["question"],
                image=image,
                answers=_answer_list(
                    note.get("answers"), f"{annotations_path}, question_id {row['question_id']}"
                ),
                answer_type=note.get("answer_type"),
                question_type=note.get("question_type"),
                multiple_choice_answer=note.get("multiple_choice_answer"),
            )
        )
    return _check_unique(samples, questions_path)


def _pick_split(dataset: Any, path: Path, split: str | None) -> Any:
    if not hasattr(dataset, "keys"):  # a Dataset, not a DatasetDict
        return dataset
    splits = list(dataset.keys())
    if split is None and len(splits) == 1:
        split = splits[0]
    if split not in splits:
        raise ValueError(f"{path}: choose a split with --split, one of {splits} (got {split!r})")
    return dataset[split]


def _lazy_image(dataset: Any, index: int) -> Callable[[], Any]:
    return lambda: dataset[index]["image"]


def load_dataset_folder(path, split=None, image_folder=None, need_images=True) -> list[VQASample]:
    """Samples from a `datasets` folder written by `save_to_disk`; the image column holds PIL
    images (decoded only when generation reaches the row) or file paths."""
    import datasets

    path = Path(path)
    dataset = _pick_split(datasets.load_from_disk(str(path)), path, split)
    columns = set(dataset.column_names)
    for key in ("question_id", "question") + (("image",) if need_images else ()):
        if key not in columns:
            raise ValueError(f"{path}: missing column {key!r} (columns: {sorted(columns)})")
    image_is_path = need_images and getattr(dataset.features["image"], "dtype", None) == "string"
    # Image columns of PIL type are left out here and decoded one row at a time during generation.
    decoded = "image" in columns and not image_is_path
    metadata = dataset.remove_columns(["image"]) if decoded else dataset
    base = Path(image_folder) if image_folder else path
    samples = []
    for index, row in enumerate(metadata):
        sample = _sample_from_record(row, f"{path}, row {index}", base if image_is_path else None)
        if need_images and decoded:
            sample.image = _lazy_image(dataset, index)
        samples.append(sample)
    return _check_unique(samples, path)


def load_vqa_samples(
    data: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    image_folder: str | os.PathLike | None = None,
    image_pattern: str | None = None,
    split: str | None = None,
    need_images: bool = True,
) -> list[VQASample]:
    """Samples from any supported format, chosen from what `data` is (folder, .jsonl, .json)."""
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    if path.is_dir():
        return load_dataset_folder(path, split=split, image_folder=image_folder, need_images=need_images)
    if path.suffix == ".jsonl":
        return load_records(path, image_folder=image_folder, need_images=need_images)
    if path.suffix != ".json":
        raise ValueError(f"{path}: expected a .json or .jsonl file or a datasets folder")
    with open(path, encoding="utf-8") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith("{"):
        return load_vqav2(path, annotations, image_folder, image_pattern, need_images=need_images)
    return load_records(path, image_folder=image_folder, need_images=need_images)


def load_predictions(path: str | os.PathLike) -> dict[str, str]:
    """Predictions keyed by str(question_id), from our predictions.jsonl or the official results
    JSON list [{"question_id", "answer"}]."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"predictions not found: {path}")
    rows = read_jsonl(path) if path.suffix == ".jsonl" else _read_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of {{'question_id', 'answer'}} objects")
    predictions: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping) or "question_id" not in row or not isinstance(row.get("answer"), str):
            raise ValueError(f"{path}, row {number}: needs 'question_id' and a string 'answer'")
        key = str(row["question_id"])
        if key in predictions:
            raise ValueError(f"{path}, row {number}: question_id {row['question_id']!r} appears twice")
        predictions[key] = row["answer"]
    return predictions


def open_image(image: Any):
    """A PIL RGB image from a path, a PIL image or a callable returning either."""
    from PIL import Image

    if callable(image):
        image = image()
    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            raise FileNotFoundError(f"image not found: {image}")
        with Image.open(image) as handle:
            return handle.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    raise ValueError(f"cannot open an image from {type(image).__name__}")
