"""Training data: LLaVA / datasets rows -> input_ids, labels, pixel_values; bad rows skipped and counted."""

from __future__ import annotations

import json
import logging as std_logging

import pytest
import torch
from PIL import Image
from tinyvlm.training.data import (
    IGNORE_INDEX,
    BadRowError,
    DataCollatorForVLM,
    SupervisedDataset,
    normalize_row,
    open_rows,
    tokenize_conversation,
)


def row(index, answer="red", image="a.png", question="<image>\nWhat colour is it?", turns=None):
    conversations = turns or [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    out = {"id": f"r{index}", "conversations": conversations}
    if image is not None:
        out["image"] = image
    return out


@pytest.fixture
def folder(tmp_path):
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("RGB", (30, 10), (0, 0, 255)).save(tmp_path / "b.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return tmp_path


def write_json(folder, rows, name="data.json"):
    path = folder / name
    path.write_text(json.dumps(rows))
    return str(path)


def labelled_text(processor, example) -> str:
    ids = [i for i, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    return processor.tokenizer.decode(ids)


def test_input_ids_and_pixels_equal_the_processor_output(tiny, folder):
    """The dataset tokenises exactly as the processor does (same special tokens, same image expansion)."""
    _, processor = tiny
    dataset = SupervisedDataset(open_rows(write_json(folder, [row(0)])), processor, str(folder))
    example = dataset[0]
    text = processor.apply_chat_template(normalize_row(row(0), 0).messages, tokenize=False)
    reference = processor(
        images=[Image.open(folder / "a.png").convert("RGB")], text=[text], return_tensors="pt"
    )
    assert example["input_ids"] == reference["input_ids"][0].tolist()
    torch.testing.assert_close(example["pixel_values"], reference["pixel_values"])


def test_loss_only_on_assistant_tokens_and_their_end_of_turn(tiny, folder):
    _, processor = tiny
    turns = [
        {"from": "human", "value": "<image>\nHow many shapes are there?"},
        {"from": "gpt", "value": "2"},
        {"from": "human", "value": "What shape are they?"},
        {"from": "gpt", "value": "square"},
    ]
    dataset = SupervisedDataset(open_rows(write_json(folder, [row(0, turns=turns)])), processor, str(folder))
    example = dataset[0]
    assert labelled_text(processor, example).replace(" ", "") == "2</s>square</s>"
    image_positions = [i for i, t in enumerate(example["input_ids"]) if t == processor.image_token_id]
    assert len(image_positions) == processor.image_seq_length
    assert all(example["labels"][i] == IGNORE_INDEX for i in image_positions)


def _merging_processor(processor):
    """The tiny processor with a BPE tokenizer that merges across newlines, trained so that the
    template's "|>\n" fuses with the answer "red" (what the offline tokenizer once did)."""
    from tinyvlm.conversion.tokenizer import add_vlm_tokens
    from tinyvlm.modeling_tinyvlm import TinyVLMProcessor
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    corpus = ["<|user|>\nWhat colour?</s>\n<|assistant|>\nred</s>\n"] * 20 + ["<|assistant|>\nred"] * 50
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    add_vlm_tokens(fast)
    return TinyVLMProcessor(
        image_processor=processor.image_processor, tokenizer=fast, image_seq_length=processor.image_seq_length
    )


def test_label_mask_survives_a_bpe_merge_across_the_prompt_answer_boundary(tiny):
    """When BPE merges "|>\nred" into one token, tokenize(prompt) is not a prefix of
    tokenize(prompt + answer), and a prefix-based mask would mask the whole answer (loss 0)."""
    processor = _merging_processor(tiny[1])
    conv = normalize_row(row(0, answer="red", image=None, question="What colour?"), 0)
    input_ids, labels = tokenize_conversation(processor, conv, None)
    prompt = processor.apply_chat_template(conv.messages[:1], tokenize=False, add_generation_prompt=True)
    prompt_ids = processor.tokenizer(prompt)["input_ids"]
    assert input_ids[: len(prompt_ids)] != prompt_ids, "the tokenizer must merge across the boundary"
    labelled = processor.tokenizer.decode([t for t, label in zip(input_ids, labels) if label != IGNORE_INDEX])
    assert "red" in labelled and labelled.endswith("</s>")


def test_text_only_rows_have_no_pixel_values_and_batch_without_them(tiny, folder):
    _, processor = tiny
    rows = [row(0, image=None, question="Name a colour."), row(1, image=None, question="And another?")]
    dataset = SupervisedDataset(open_rows(write_json(folder, rows)), processor, str(folder))
    batch = DataCollatorForVLM(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    assert "pixel_values" not in batch
    assert (batch["labels"] != IGNORE_INDEX).any()


def test_collator_pads_right_and_keeps_images_in_row_order(tiny, folder):
    _, processor = tiny
    rows = [
        row(0, image="a.png"),
        row(1, image=None, question="A text-only question that is rather longer than the others?"),
        row(2, image="b.png", answer="blue"),
    ]
    dataset = SupervisedDataset(open_rows(write_json(folder, rows)), processor, str(folder))
    examples = [dataset[i] for i in range(3)]
    batch = DataCollatorForVLM(processor.tokenizer.pad_token_id)(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (3, max(lengths))
    for r, n in enumerate(lengths):
        assert batch["attention_mask"][r].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["labels"][r, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][r, n:] == processor.tokenizer.pad_token_id).all()
    assert batch["pixel_values"].shape[0] == 2
    torch.testing.assert_close(batch["pixel_values"][1], examples[2]["pixel_values"][0])


def test_bad_rows_are_skipped_counted_and_named_in_the_log(tiny, folder, caplog):
    _, processor = tiny
    rows = [
        row(0),
        row(1, image="missing.png"),
        row(2, question="no placeholder here"),
        {"id": "r3", "image": "a.png", "conversations": []},
        {"id": "r4", "conversations": [{"from": "gpt", "value": "answer first"}]},
        "not a dict",
        row(6, image="broken.png"),
        row(7, image="b.png"),
    ]
    dataset = SupervisedDataset(open_rows(write_json(folder, rows)), processor, str(folder))
    with caplog.at_level(std_logging.WARNING):
        items = [dataset[i] for i in range(len(dataset))]  # the broken image shows only when read
        dataset.log_summary()
    summary = dataset.summary()
    assert summary["rows_total"] == 8 and summary["rows_skipped"] == 6 and summary["rows_used"] == 2
    assert summary["skipped_by_reason"] == {
        "empty": 1,
        "image_count_mismatch": 1,
        "image_missing": 1,
        "image_unreadable": 1,
        "malformed": 2,
    }
    assert all(item["pixel_values"] is not None for item in items)
    for name in ("r1", "r2", "r3", "r4", "row 5", "r6"):
        assert name in caplog.text


def test_strict_fails_on_the_first_bad_row_naming_it(tiny, folder):
    _, processor = tiny
    with pytest.raises(ValueError, match=r"row 1 \(id 'r1'\): image_missing"):
        SupervisedDataset(
            open_rows(write_json(folder, [row(0), row(1, image="nope.png")])),
            processor,
            str(folder),
            strict=True,
        )
    dataset = SupervisedDataset(
        open_rows(write_json(folder, [row(0, image="broken.png")])), processor, str(folder), strict=True
    )
    with pytest.raises(BadRowError, match="image_unreadable"):
        dataset[0]


def test_malformed_jsonl_line_is_one_bad_row(tiny, folder):
    _, processor = tiny
    path = folder / "data.jsonl"
    path.write_text(json.dumps(row(0)) + "\n{not json\n" + json.dumps(row(2, image="b.png")) + "\n")
    dataset = SupervisedDataset(open_rows(str(path)), processor, str(folder))
    assert len(dataset) == 2 and dataset.summary()["skipped_by_reason"] == {"malformed": 1}


def test_truncation_keeps_the_image_or_skips_the_row(tiny, folder):
    _, processor = tiny
    per_image = processor.image_seq_length
    long_answer = "red " * 40
    rows = [row(0, answer=long_answer), row(1, question="<image>\n" + "What colour is it? " * 30)]
    max_length = per_image + 30
    dataset = SupervisedDataset(
        open_rows(write_json(folder, rows)), processor, str(folder), model_max_length=max_length
    )
    example = dataset[0]  # cut inside the answer: kept, image intact
    assert len(example["input_ids"]) == max_length
    assert example["input_ids"].count(processor.image_token_id) == per_image
    assert any(label != IGNORE_INDEX for label in example["labels"])
    # row 1: the question alone overflows, no answer token would remain -> skipped when read
    assert dataset[1]["input_ids"] == example["input_ids"]  # replaced by the next good row
    assert dataset.summary()["skipped_by_reason"] == {"too_long": 1}
    short = SupervisedDataset(
        open_rows(write_json(folder, [row(0)], "one.json")),
        processor,
        str(folder),
        model_max_length=per_image,
    )
    with pytest.raises(ValueError, match="bad rows in a row"):
        short[0]  # the cut would go through the image tokens, and no other row is left


def test_require_images_leaves_text_only_rows_out(tiny, folder):
    _, processor = tiny
    rows = [row(0), row(1, image=None, question="Text only?")]
    dataset = SupervisedDataset(
        open_rows(write_json(folder, rows)), processor, str(folder), require_images=True
    )
    assert len(dataset) == 1 and dataset.summary()["text_only_rows_skipped"] == 1
    assert dataset.summary()["rows_skipped"] == 0
    kept = SupervisedDataset(open_rows(write_json(folder, rows)), processor, str(folder))
    assert len(kept) == 2 and kept.text_only_rows == 1  # train sets DDP's find_unused_parameters from this


def test_datasets_dataset_with_an_image_column(tiny):
    """A `datasets` dataset: chat `messages` + an `images` list column; a corrupt image is a bad row."""
    datasets = pytest.importorskip("datasets")
    _, processor = tiny
    good = Image.new("RGB", (16, 16), (0, 255, 0))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "green"}]},
    ]
    data = datasets.Dataset.from_dict(
        {"images": [[good], [good], []], "messages": [messages, messages, messages]}
    )
    dataset = SupervisedDataset(open_rows(data), processor)
    assert len(dataset) == 2  # row 2: one placeholder, no image
    assert dataset.summary()["skipped_by_reason"] == {"image_count_mismatch": 1}
    example = dataset[0]
    assert example["pixel_values"].shape[0] == 1
    assert labelled_text(processor, example).replace(" ", "") == "green</s>"


def test_llava_rows_from_a_saved_dataset_folder(tiny, folder, tmp_path):
    datasets = pytest.importorskip("datasets")
    _, processor = tiny
    raw = [row(0), row(1, image="b.png", answer="blue")]
    data = datasets.Dataset.from_list([{**r, "image": Image.open(folder / r["image"])} for r in raw])
    data.save_to_disk(str(tmp_path / "saved"))
    dataset = SupervisedDataset(open_rows(str(tmp_path / "saved")), processor)
    assert len(dataset) == 2
    assert labelled_text(processor, dataset[1]).replace(" ", "") == "blue</s>"


def test_missing_data_file_raises_file_not_found(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        open_rows(str(tmp_path / "nothing.json"))
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(ValueError, match="JSON list"):
        open_rows(str(tmp_path / "obj.json"))


def test_iteration_stops_at_the_end(tiny, folder):
    """`for item in dataset` (transformers' LengthGroupedSampler does this) must end."""
    _, processor = tiny
    dataset = SupervisedDataset(
        open_rows(write_json(folder, [row(0), row(1, "blue")])), processor, str(folder)
    )
    assert len(list(dataset)) == 2 and dataset[-1]["labels"] == dataset[1]["labels"]
    with pytest.raises(IndexError, match="item 2 of a dataset of 2"):
        dataset[2]


def test_estimated_lengths_are_close_and_decode_no_image(tiny, folder, monkeypatch):
    from tinyvlm.training import data

    _, processor = tiny
    long_turns = [
        {"from": "human", "value": "<image>\nDescribe the picture in detail, please."},
        {"from": "gpt", "value": "A red square fills the whole frame; there is nothing else in it. " * 6},
        {"from": "human", "value": "And the border?"},
        {"from": "gpt", "value": "None."},
    ]
    rows = [row(0), row(1, image="b.png", turns=long_turns), row(2, image=None, question="Hi?")]
    dataset = SupervisedDataset(open_rows(write_json(folder, rows)), processor, str(folder))
    exact = [len(item["input_ids"]) for item in dataset]
    labelled = [sum(label != IGNORE_INDEX for label in item["labels"]) for item in dataset]

    def no_images(*args):
        raise AssertionError("estimated_lengths decoded an image")

    monkeypatch.setattr(data, "load_image", no_images)
    estimated = dataset.estimated_lengths()
    assert len(estimated) == 3 and estimated.index(max(estimated)) == exact.index(max(exact))
    for guess, true in zip(estimated, exact):
        assert abs(guess - true) <= 0.1 * true + 4, (estimated, exact)
    # in chunks, with the answers: the labelled tokens of each item
    convs = [data.normalize_row(r, i) for i, r in enumerate(rows)]
    lengths, answers = data.estimate_token_counts(convs, processor, chunk=2)
    assert lengths == estimated
    for guess, true in zip(answers, labelled):
        assert abs(guess - true) <= 0.1 * true + 2, (answers, labelled)
    # truncation cuts answers first
    short = data.estimate_token_counts(convs[1:2], processor, max_length=lengths[1] - 10)
    assert short == ([lengths[1] - 10], [answers[1] - 10])


def test_length_index_by_modality_keeps_image_and_text_only_rows_apart(tiny, folder):
    """Signed lengths (LLaVA's modality lengths) through transformers' own LengthGroupedSampler:
    a batch mixes image and text-only rows at most once per mega-batch (unsigned: 9 of 12 here)."""
    from tinyvlm.training.data import length_index
    from transformers.trainer_pt_utils import LengthGroupedSampler

    _, processor = tiny
    rows = []
    for i in range(48):  # similar lengths in both modalities, so plain length sorting mixes them
        words = "word " * (3 + (7 * i) % 23)
        if i % 2:
            rows.append(row(i, answer=words))
        else:
            rows.append(row(i, answer=words, image=None, question="Say something long?"))
    dataset = SupervisedDataset(open_rows(write_json(folder, rows)), processor, str(folder))
    lengths = list(length_index(dataset, by_modality=True)["length"])
    assert [abs(n) for n in lengths] == dataset.estimated_lengths()
    assert [n > 0 for n in lengths] == [i % 2 == 1 for i in range(48)]
    batch_size = 4
    order = list(
        LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(0))
    )
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    mixed = [b for b in batches if len({lengths[i] > 0 for i in b}) > 1]
    mega_batches = len(order) // (batch_size * min(len(order) // (batch_size * 4), 50))
    assert len(mixed) <= mega_batches < len(batches)
