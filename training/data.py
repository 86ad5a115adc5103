"""Training data: LLaVA conversation JSON/JSONL or a `datasets` dataset -> model tensors, bad rows skipped.

    row -> Conversation (messages with image parts, image references)   normalize_row
        -> text through the processor's chat template                  render_with_spans
        -> input_ids, labels (loss on assistant turns only)            tokenize_conversation
        -> padded batch: input_ids, attention_mask, labels (batch, seq),
           pixel_values (num_images_in_batch, 3, H, W)                 DataCollatorForVLM

Design choices:
- Labels are masked from character spans of the rendered chat template, mapped to tokens through
  the tokenizer's offsets. Only string prefixes of the template are assumed (render(turns[:k]) is a
  prefix of render(turns[:k+1])), never token prefixes: BPE may merge across the prompt/answer
  boundary, and a prefix-token mask then silently masks everything (loss 0).
- An assistant turn's span ends after its end-of-turn token (`</s>`), so the model learns to stop.
  Prompt, padding and image tokens are -100.
- Truncation cuts the right end at `model_max_length`; a row whose image tokens would be cut, or
  that keeps no assistant token, is a bad row ("too long").
- Bad rows are skipped and counted, never fatal (a run must not die on row 400,000): a cheap pre-scan
  (structure, `<image>` count, image files exist) drops most up front; what only shows when the row
  is built (an unreadable image, too long) is found in `__getitem__`, which logs it and returns the
  next good row instead. `strict=True` raises on the first bad row, naming it.
- Skips found in dataloader worker processes are logged by the worker; the end-of-run summary counts
  those seen by the main process (all of them with `dataloader_num_workers=0`).
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers.utils import logging

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# PIL raises SyntaxError for some broken PNG chunks and DecompressionBombError outside OSError.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
MAX_CONSECUTIVE_BAD_ROWS = 1000
LOGGED_SKIPS = 50
# Role markers and end-of-turn tokens the chat template adds around each message (TinyLlama-Chat's
# "<|user|>\n ... </s>\n" is about 6); only used to estimate lengths for grouping.
TEMPLATE_TOKENS_PER_MESSAGE = 6


class BadRowError(ValueError):
    """A row that cannot be trained on; `reason` is one of the summary's categories."""

    def __init__(self, index: int, row_id: Any, reason: str, detail: str):
        self.index, self.row_id, self.reason, self.detail = index, row_id, reason, detail
        name = f"row {index}" + (f" (id {row_id!r})" if row_id is not None and row_id != index else "")
        super().__init__(f"{name}: {reason}: {detail}")


@dataclass
class Conversation:
    """A normalised row: chat messages whose content is a list of {"type": "image"|"text"} parts,
    and one image reference per image part, in order (a path, a PIL image, or datasets' bytes dict)."""

    index: int
    row_id: Any
    messages: list[dict]
    images: list = field(default_factory=list)

    def bad(self, reason: str, detail: str) -> BadRowError:
        return BadRowError(self.index, self.row_id, reason, detail)


# ---------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------
class JsonlRows(Sequence):
    """JSONL lines parsed when read, so one malformed line is one bad row, not a failed load."""

    def __init__(self, path: str):
        with open(path, encoding="utf-8") as f:
            self.lines = [line for line in f if line.strip()]
        self.path = path

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> dict:
        try:
            row = json.loads(self.lines[index])
        except json.JSONDecodeError as err:
            raise BadRowError(index, None, "malformed", f"not valid JSON in {self.path}: {err}") from None
        return row


def text_view(rows: Sequence) -> tuple[Sequence, list[int] | None]:
    """Rows to normalise without touching images: a datasets dataset's text columns and its image
    count per row (for `normalize_row(..., num_images=)`), or the rows themselves."""
    if isinstance(rows, DatasetRows):
        return rows.text_rows(), rows.image_counts()
    return rows, None


def open_rows(data_path, data_split: str = "train", image_column: str | None = None) -> Sequence:
    """Rows of a LLaVA .json (a list) or .jsonl file, a `save_to_disk` folder, a `datasets` name, or a
    `datasets.Dataset` given as is."""
    if not isinstance(data_path, (str, os.PathLike)):
        return DatasetRows(data_path, image_column)
    data_path = os.fspath(data_path)
    if data_path.endswith((".json", ".jsonl")):
        if not os.path.isfile(data_path):
            raise FileNotFoundError(f"--data_path {data_path} does not exist")
        if data_path.endswith(".jsonl"):
            return JsonlRows(data_path)
        with open(data_path, encoding="utf-8") as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{data_path} is not valid JSON ({err}); use JSONL to skip bad lines"
                ) from None
        if not isinstance(rows, list):
            raise ValueError(f"{data_path} must hold a JSON list of rows, got {type(rows).__name__}")
        return rows
    import datasets  # only this path needs it

    if os.path.isdir(data_path) and any(
        os.path.exists(os.path.join(data_path, name))
        for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    ):
        data = datasets.load_from_disk(data_path)
    else:
        data = datasets.load_dataset(data_path, split=data_split)
    if isinstance(data, datasets.DatasetDict):
        if data_split not in data:
            raise ValueError(f"{data_path} has splits {list(data)}, not --data_split {data_split!r}")
        data = data[data_split]
    return DatasetRows(data, image_column)


class DatasetRows(Sequence):
    """Rows of a `datasets.Dataset` read through Arrow: image columns come as {"bytes", "path"} and
    are decoded by `load_image`, so a corrupt image is one bad row instead of an exception in
    `datasets`. `image_counts` gives the number of images per row without reading any image."""

    def __init__(self, data, image_column: str | None = None):
        self.data = data
        self.arrow = data.with_format("arrow")
        self.image_column = image_column or next(
            (c for c in ("images", "image") if c in data.column_names), None
        )
        if image_column is not None and image_column not in data.column_names:
            raise ValueError(
                f"--image_column {image_column!r} is not a column of the dataset: {data.column_names}"
            )

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        return self.arrow[index].to_pylist()[0]

    def text_rows(self) -> Sequence:
        """The rows without the image column (cheap to read in a pre-scan)."""
        return self.data.remove_columns([self.image_column]) if self.image_column else self.data

    def image_counts(self) -> list[int]:
        if self.image_column is None:
            return [0] * len(self)
        import pyarrow as pa
        import pyarrow.compute as pc

        column = self.arrow[:][self.image_column]  # zero-copy for memory-mapped datasets
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            return [n or 0 for n in pc.list_value_length(column).to_pylist()]
        return [int(valid) for valid in column.is_valid().to_pylist()]


# ---------------------------------------------------------------------------------------------
# Normalising a row
# ---------------------------------------------------------------------------------------------
def _split_image_placeholders(text: str) -> list[dict]:
    """ "<image>\\nWhat is it?" -> [image part, text part "What is it?"]: each placeholder becomes an
    image part where it stood; the template renders it back as "<image>\\n"."""
    parts = []
    for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i > 0:
            parts.append({"type": "image"})
        if piece.strip():
            parts.append({"type": "text", "text": piece.strip()})
    return parts


def _content_parts(content) -> list[dict] | None:
    if isinstance(content, str):
        return _split_image_placeholders(content)
    if not isinstance(content, list):
        return None
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.extend(_split_image_placeholders(part["text"]))
        elif kind == "image":
            parts.append({"type": "image"})
        else:
            return None
    return parts


def _turns(raw: dict) -> tuple[list[tuple[Any, Any]], str] | None:
    if "conversations" in raw:  # LLaVA: {"from": "human"|"gpt", "value": str}
        turns = raw["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            return None
        return [(t.get("from"), t.get("value")) for t in turns], "conversations"
    if "messages" in raw:  # chat format: {"role": ..., "content": str | parts}
        turns = raw["messages"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            return None
        return [(t.get("role"), t.get("content")) for t in turns], "messages"
    return None


def _image_refs(raw: dict, image_column: str | None) -> list:
    keys = [image_column] if image_column else ["images", "image"]
    for key in keys:
        value = raw.get(key)
        if value is not None:
            return list(value) if isinstance(value, list) else [value]
    return []


def normalize_row(
    raw: Any, index: int, image_column: str | None = None, num_images: int | None = None
) -> Conversation:
    """A raw row -> Conversation, or BadRowError: malformed or empty conversation, roles not
    alternating user/assistant (after an optional system turn), or `<image>` count != images.
    `num_images` replaces reading the image column (pre-scan of a `datasets` dataset)."""
    row_id = raw.get("id", raw.get("question_id")) if isinstance(raw, dict) else None
    conv = Conversation(index, row_id, [])
    turns = _turns(raw) if isinstance(raw, dict) else None
    if turns is None:
        raise conv.bad("malformed", "expected a dict with a 'conversations' or 'messages' list of dicts")
    turns, key = turns
    if not turns:
        raise conv.bad("empty", f"'{key}' is empty")
    for i, (role, content) in enumerate(turns):
        parts = _content_parts(content)
        if role not in ROLES or parts is None:
            raise conv.bad("malformed", f"turn {i} of '{key}': unknown role {role!r} or content not text")
        conv.messages.append({"role": ROLES[role], "content": parts})
    _check_roles(conv)
    conv.images = [None] * num_images if num_images is not None else _image_refs(raw, image_column)
    _check_image_parts(conv)
    return conv


def _check_roles(conv: Conversation) -> None:
    roles = [m["role"] for m in conv.messages]
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if not body or body != expected[: len(body)] or body[-1] != "assistant":
        raise conv.bad(
            "malformed", f"roles {roles}: expected user/assistant turns alternating, ending with assistant"
        )
    for message in conv.messages:
        if message["role"] == "assistant" and not any(p["type"] == "text" for p in message["content"]):
            raise conv.bad("empty", "an assistant turn has no text")
        if message["role"] == "assistant" and any(p["type"] == "image" for p in message["content"]):
            raise conv.bad("image_count_mismatch", "an <image> placeholder in an assistant turn")


def _check_image_parts(conv: Conversation) -> None:
    placeholders = sum(p["type"] == "image" for m in conv.messages for p in m["content"])
    if placeholders != len(conv.images):
        raise conv.bad(
            "image_count_mismatch",
            f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(conv.images)} image(s)",
        )


def image_path(ref: str, image_folder: str | None) -> str:
    return ref if image_folder is None or os.path.isabs(ref) else os.path.join(image_folder, ref)


def check_image_files(conv: Conversation, image_folder: str | None) -> None:
    """Pre-scan: image paths must exist (cheap: no decoding)."""
    for ref in conv.images:
        if isinstance(ref, str) and not os.path.isfile(image_path(ref, image_folder)):
            raise conv.bad("image_missing", f"no file {image_path(ref, image_folder)}")


def load_image(ref: Any, image_folder: str | None) -> Image.Image:
    """A path (under `image_folder`), a PIL image or datasets' {"bytes", "path"} -> RGB PIL image."""
    if isinstance(ref, Image.Image):
        image = ref
    elif isinstance(ref, dict) and ref.get("bytes") is not None:
        image = Image.open(io.BytesIO(ref["bytes"]))
    elif isinstance(ref, (str, dict)):
        path = ref if isinstance(ref, str) else ref.get("path")
        if path is None:
            raise ValueError(f"image reference without bytes or path: {ref!r}")
        image = Image.open(image_path(path, image_folder))
    else:
        raise ValueError(f"unsupported image reference of type {type(ref).__name__}")
    image.load()  # decode now, so a truncated file fails here and not in the image processor
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Text and labels
# ---------------------------------------------------------------------------------------------
def render_with_spans(processor, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The chat-template text of the conversation and the character span of each assistant turn
    (its text and end-of-turn token, without the newline the template puts after it)."""
    text = processor.apply_chat_template(messages, tokenize=False)
    spans = []
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = processor.apply_chat_template(messages[:j], tokenize=False, add_generation_prompt=True)
        upto = processor.apply_chat_template(messages[: j + 1], tokenize=False)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise ValueError(
                "The processor's chat template does not render conversations prefix by prefix (the text up "
                f"to turn {j} is not a prefix of the whole): assistant turns cannot be located for the labels"
            )
        spans.append((len(prompt), len(upto.rstrip())))
    return text, spans


def tokenize_conversation(
    processor, conv: Conversation, max_length: int | None
) -> tuple[list[int], list[int]]:
    """input_ids with each image placeholder expanded to `image_seq_length` image tokens, and labels
    that are the ids on assistant tokens and -100 elsewhere. Raises BadRowError ("too_long") when
    truncation would cut image tokens or leave no assistant token."""
    text, spans = render_with_spans(processor, conv.messages)
    # Tokenised as the processor does (same special tokens), with offsets to find the spans.
    encoding = processor.tokenizer(text, return_offsets_mapping=True)
    image_id, per_image = processor.image_token_id, processor.image_seq_length
    input_ids, labels = [], []
    for token, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
        if token == image_id:
            input_ids += [image_id] * per_image
            labels += [IGNORE_INDEX] * per_image
            continue
        in_answer = end > start and any(
            start < span_end and end > span_start for span_start, span_end in spans
        )
        input_ids.append(token)
        labels.append(token if in_answer else IGNORE_INDEX)
    if max_length is not None and len(input_ids) > max_length:
        image_end = max((k + 1 for k, token in enumerate(input_ids) if token == image_id), default=0)
        if image_end > max_length:
            raise conv.bad(
                "too_long", f"{len(input_ids)} tokens, image tokens end at {image_end} > {max_length}"
            )
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise conv.bad("too_long", f"no assistant token left within model_max_length {max_length}")
    if all(label == IGNORE_INDEX for label in labels):
        raise conv.bad("empty", "no assistant token to train on")
    return input_ids, labels


# ---------------------------------------------------------------------------------------------
# Dataset and collator
# ---------------------------------------------------------------------------------------------
class SupervisedDataset(torch.utils.data.Dataset):
    """Model-ready examples from rows (see `open_rows`). Each item: `input_ids` and `labels` (lists
    of ints), `pixel_values` `(num_images, 3, H, W)` or None for a text-only row.

    `require_images` drops text-only rows up front (phase projector: they carry no gradient to the
    projector, and a text-only batch would have nothing to train)."""

    def __init__(
        self,
        rows: Sequence,
        processor,
        image_folder: str | None = None,
        model_max_length: int | None = None,
        strict: bool = False,
        require_images: bool = False,
        image_column: str | None = None,
    ):
        if not getattr(processor.tokenizer, "is_fast", False):
            raise ValueError(
                "The training data pipeline needs a fast tokenizer (it maps labels through offsets)"
            )
        self.rows, self.processor, self.image_folder = rows, processor, image_folder
        self.model_max_length, self.strict, self.image_column = model_max_length, strict, image_column
        self.skipped: list[dict] = []
        self.bad: set[int] = set()
        self.text_only_skipped = 0
        self.text_only_rows = 0  # text-only rows kept
        self.valid = self._prescan(require_images)
        if not self.valid:
            raise ValueError(f"No usable rows in the training data: {self.summary()}")

    def _prescan(self, require_images: bool) -> list[int]:
        # Structure, <image> count and image files only: no decoding, no tokenising.
        view, counts = text_view(self.rows)
        valid = []
        for index in range(len(view)):
            try:
                conv = normalize_row(view[index], index, self.image_column, counts[index] if counts else None)
                check_image_files(conv, self.image_folder)
            except BadRowError as err:
                self._skip(err)
                continue
            if not conv.images:
                if require_images:
                    self.text_only_skipped += 1
                    continue
                self.text_only_rows += 1
            valid.append(index)
        return valid

    def _skip(self, err: BadRowError) -> None:
        if self.strict:
            raise err
        self.bad.add(err.index)
        self.skipped.append({"row": err.index, "id": err.row_id, "reason": err.reason, "detail": err.detail})
        if len(self.skipped) <= LOGGED_SKIPS:
            logger.warning("skipping %s", err)
        else:
            logger.info("skipping %s", err)

    def __len__(self) -> int:
        return len(self.valid)

    def __getitem__(self, i: int) -> dict:
        if not -len(self.valid) <= i < len(self.valid):
            # Sequence protocol: `for item in dataset` (transformers' LengthGroupedSampler) stops here.
            raise IndexError(f"item {i} of a dataset of {len(self.valid)}")
        i %= len(self.valid)
        # A row that turns out bad only now is replaced by the next good one: the batch keeps its
        # size and the run goes on. Deterministic in `i`, so resuming reproduces the same batches.
        for attempt in range(MAX_CONSECUTIVE_BAD_ROWS):
            index = self.valid[(i + attempt) % len(self.valid)]
            if index in self.bad:
                continue
            try:
                return self.build(index)
            except BadRowError as err:
                self._skip(err)
        raise ValueError(
            f"{MAX_CONSECUTIVE_BAD_ROWS} bad rows in a row after row {self.valid[i]}; is --image_folder right? "
            f"{self.summary()}"
        )

    def build(self, index: int) -> dict:
        conv = normalize_row(self.rows[index], index, self.image_column)
        images = []
        for ref in conv.images:
            try:
                images.append(load_image(ref, self.image_folder))
            except IMAGE_ERRORS as err:
                name = image_path(ref, self.image_folder) if isinstance(ref, str) else "embedded image"
                raise conv.bad("image_unreadable", f"{name}: {err}") from None
        input_ids, labels = tokenize_conversation(self.processor, conv, self.model_max_length)
        pixel_values = None
        if images:
            pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return {"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values}

    def estimated_lengths(self, negative_without_image: bool = False) -> list[int]:
        """Tokens of each item (in `__getitem__` order), estimated without decoding an image (see
        `estimate_token_counts`): close enough to group rows by length, at a fraction of the cost.
        `negative_without_image` negates text-only rows (LLaVA's modality lengths)."""
        view, counts = text_view(self.rows)
        has_image = []

        def conversations():
            for i in self.valid:
                conv = normalize_row(view[i], i, self.image_column, counts[i] if counts else None)
                has_image.append(bool(conv.images))
                yield conv

        lengths = estimate_token_counts(
            conversations(), self.processor, self.model_max_length, total=len(self.valid)
        )[0]
        if negative_without_image:
            lengths = [n if image else -n for n, image in zip(lengths, has_image)]
        return lengths

    def summary(self) -> dict:
        """Rows used and skipped, by reason (as far as this process has seen)."""
        reasons = dict(sorted(Counter(s["reason"] for s in self.skipped).items()))
        return {
            "rows_total": len(self.rows),
            "rows_used": len(self.valid) - len(self.bad & set(self.valid)),
            "rows_skipped": len(self.bad),
            "skipped_by_reason": reasons,
            "text_only_rows_skipped": self.text_only_skipped,
        }

    def log_summary(self) -> None:
        summary = self.summary()
        first = ", ".join(
            f"row {s['row']}" + (f" (id {s['id']!r})" if s["id"] is not None else "")
            for s in self.skipped[:10]
        )
        message = (
            f"data: {summary['rows_used']} of {summary['rows_total']} rows used, {summary['rows_skipped']} bad rows "
            f"skipped {summary['skipped_by_reason']}" + (f"; first: {first}" if first else "")
        )
        if summary["text_only_rows_skipped"]:
            message += f"; {summary['text_only_rows_skipped']} text-only rows left out (no image to train on)"
        (logger.warning if summary["rows_skipped"] else logger.info)(message)


def estimate_token_counts(
    conversations, processor, max_length: int | None = None, total: int | None = None, chunk: int = 4096
) -> tuple[list[int], list[int]]:
    """(tokens, answer tokens) per conversation without decoding an image or rendering the chat
    template: `image_seq_length` per image, the message texts tokenised in fast batches, and
    TEMPLATE_TOKENS_PER_MESSAGE for each message's role markup (an answer's end-of-turn token counts
    as answer). Truncation to `max_length` cuts the end, where the answers are."""
    from itertools import islice

    from tqdm.auto import tqdm

    tokenizer, per_image = processor.tokenizer, processor.image_seq_length
    conversations = iter(conversations)
    lengths, answers = [], []
    with tqdm(total=total, desc="token counts", unit="row") as progress:
        while batch := list(islice(conversations, chunk)):
            texts, fixed, answer_messages = [], [], []
            for conv in batch:
                for message in conv.messages:
                    texts.append("\n".join(p["text"] for p in message["content"] if p["type"] == "text"))
                fixed.append(per_image * len(conv.images) + TEMPLATE_TOKENS_PER_MESSAGE * len(conv.messages))
                answer_messages.append([m["role"] == "assistant" for m in conv.messages])
            encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"])
            for extra, roles in zip(fixed, answer_messages):
                sizes = [len(next(encoded)) for _ in roles]
                length = sum(sizes) + extra
                answer = sum(n + 1 for n, is_answer in zip(sizes, roles) if is_answer)
                if max_length is not None and length > max_length:
                    answer, length = max(0, answer - (length - max_length)), max_length
                lengths.append(length)
                answers.append(answer)
            progress.update(len(batch))
    return lengths, answers


def length_index(dataset: SupervisedDataset, column: str = "length", by_modality: bool = False):
    """A `datasets.Dataset` of `position` and `column` (estimated tokens) per item, to train on
    with `RowBuildingCollator`: transformers' length-grouped samplers read lengths from such a
    column, and otherwise build every row, images decoded, just to measure it.

    `by_modality`: text-only rows get negative lengths, as LLaVA's `modality_lengths`. The Trainer's
    LengthGroupedSampler sorts each mega-batch longest first, so image rows and text-only rows then
    meet in at most one batch per mega-batch (a text-only batch gives the projector no gradient)."""
    import datasets

    lengths = dataset.estimated_lengths(negative_without_image=by_modality)
    return datasets.Dataset.from_dict({"position": list(range(len(dataset))), column: lengths})


@dataclass
class RowBuildingCollator:
    """Builds the rows of a `length_index` batch from their positions, then collates them: the
    images are decoded where the batch is made (in the DataLoader workers), as without the index."""

    dataset: SupervisedDataset
    collator: Any

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return self.collator([self.dataset[int(f["position"])] for f in features])


@dataclass
class DataCollatorForVLM:
    """Right-pads a list of dataset items into `input_ids`, `attention_mask`, `labels` (batch, seq)
    and concatenates their images into `pixel_values` (num_images, 3, H, W), row by row, in the order
    of their image tokens (what the model's scatter expects). No `pixel_values` for a text-only batch."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.as_tensor(example["input_ids"])
            labels[row, :n] = torch.as_tensor(example["labels"])
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        pixel_values = [e["pixel_values"] for e in examples if e.get("pixel_values") is not None]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values)
        return batch
