"""TinyVLMProcessor: placeholder expansion, checks, chat template, decode, save/load."""

from __future__ import annotations

import pytest
from conftest import solid_image, user_prompt
from tinyvlm.modeling_tinyvlm import DEFAULT_CHAT_TEMPLATE
from transformers import AutoProcessor

pytestmark = pytest.mark.compat


def test_chat_template_is_tinyllama_chat_style(tiny):
    _, processor = tiny
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    rendered = processor.apply_chat_template(messages, tokenize=False)
    assert (
        rendered == "<|system|>\nBe brief.</s>\n<|user|>\n<image>\nWhat colour?</s>\n<|assistant|>\nred</s>\n"
    )
    prompt = processor.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("What colour?</s>\n<|assistant|>\n")
    assert processor.chat_template == DEFAULT_CHAT_TEMPLATE


def test_image_placeholder_expands_to_image_seq_length(tiny):
    model, processor = tiny
    batch = processor(images=[solid_image()], text=[user_prompt(processor, "Colour?")], return_tensors="pt")
    ids = batch["input_ids"][0].tolist()
    first = ids.index(processor.image_token_id)
    run = ids[first : first + processor.image_seq_length]
    assert run == [model.config.image_token_id] * model.config.image_seq_length
    assert ids.count(processor.image_token_id) == processor.image_seq_length
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    size = model.config.vision_config.image_size
    assert tuple(batch["pixel_values"].shape) == (1, 3, size, size)


def test_more_placeholders_than_images_raises(tiny):
    _, processor = tiny
    text = user_prompt(processor, "Which one?", num_images=2)
    with pytest.raises(
        ValueError, match=r"holds 2 <image> placeholder\(s\) \(per prompt: \[2\]\) but 1 image"
    ):
        processor(images=[solid_image()], text=[text])


def test_more_images_than_placeholders_raises(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match=r"holds 1 <image> .* but 3 image"):
        processor(images=[solid_image()] * 3, text=[user_prompt(processor, "Colour?")])


def test_truncation_through_an_image_raises(tiny):
    _, processor = tiny
    text = user_prompt(processor, "Colour?")
    with pytest.raises(ValueError, match="Prompt 0: .* truncation"):
        processor(images=[solid_image()], text=[text], truncation=True, max_length=8)


def test_images_nested_per_prompt_are_flattened_in_order(tiny):
    _, processor = tiny
    texts = [user_prompt(processor, "A?", 2), user_prompt(processor, "B?", 1)]
    images = [[solid_image((255, 0, 0)), solid_image((0, 255, 0))], [solid_image((0, 0, 255))]]
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
    assert batch["pixel_values"].shape[0] == 3
    # blue image last: its blue channel is high, red low (mean = std = 0.5 normalisation)
    assert batch["pixel_values"][2, 2].mean() > 0.9 and batch["pixel_values"][2, 0].mean() < -0.9


def test_batch_decode_skips_special_tokens(tiny):
    _, processor = tiny
    ids = processor.tokenizer("the red circle</s>").input_ids
    assert processor.batch_decode([ids], skip_special_tokens=True) == ["the red circle"]


def test_save_and_load_round_trip(tiny, tmp_path):
    _, processor = tiny
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "preprocessor_config.json").exists(), "4.57 needs preprocessor_config.json"
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "TinyVLMProcessor"
    assert loaded.image_seq_length == processor.image_seq_length
    assert loaded.chat_template == processor.chat_template
    text = [user_prompt(processor, "Colour?")]
    a = processor(images=[solid_image()], text=text, return_tensors="pt")
    b = loaded(images=[solid_image()], text=text, return_tensors="pt")
    assert a["input_ids"].tolist() == b["input_ids"].tolist()
    assert (a["pixel_values"] == b["pixel_values"]).all()
