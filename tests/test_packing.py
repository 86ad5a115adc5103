"""Padding-free (packed) batches give the padded batch's loss and per-row logits."""

from __future__ import annotations

import pytest
import torch
from conftest import solid_image, user_prompt
from tinyvlm.conversion.build import build_preset_model
from tinyvlm.training.data import DataCollatorForVLM
from tinyvlm.training.packing import DataCollatorForVLMPadFree, length_grouped_indices

ANSWERS = ["red", "a large blue circle in the top left corner of the picture", "two"]


def _items(processor, with_text_only=True):
    items = []
    for i, answer in enumerate(ANSWERS):
        prompt = user_prompt(processor, f"Question number {i}?")
        ids = processor(images=[solid_image((80 * i, 0, 0))], text=[prompt + answer + "</s>"]).input_ids[0]
        prompt_len = len(processor(images=[solid_image()], text=[prompt]).input_ids[0])
        labels = [-100] * prompt_len + ids[prompt_len:]
        pixel_values = processor.image_processor(
            [solid_image((80 * i, 0, 0))], return_tensors="pt"
        ).pixel_values
        items.append({"input_ids": ids, "labels": labels, "pixel_values": pixel_values})
    if with_text_only:
        text = processor.apply_chat_template(
            [{"role": "user", "content": "Hello there"}], add_generation_prompt=True
        )
        ids = processor(text=[text + "hi</s>"]).input_ids[0]
        items.append({"input_ids": ids, "labels": [-100] * (len(ids) - 3) + ids[-3:], "pixel_values": None})
    return items


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_logits_equal_padded(attn):
    model, processor = build_preset_model("tiny", seed=0)
    model.config._attn_implementation = attn
    model.language_model.config._attn_implementation = attn
    items = _items(processor)
    padded = DataCollatorForVLM(pad_token_id=processor.tokenizer.pad_token_id)(items)
    packed = DataCollatorForVLMPadFree()(items)
    assert packed["input_ids"].shape == (1, sum(len(i["input_ids"]) for i in items))
    assert "attention_mask" not in packed and packed["pixel_values"].shape[0] == 3
    with torch.no_grad():
        out_padded = model(**padded)
        out_packed = model(**packed)
    torch.testing.assert_close(out_packed.loss, out_padded.loss, rtol=0, atol=1e-5)
    start = 0
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        torch.testing.assert_close(
            out_packed.logits[0, start : start + n], out_padded.logits[row, :n], rtol=0, atol=1e-5
        )
        start += n


def test_first_label_of_each_row_is_ignored():
    items = [{"input_ids": [1, 5, 6], "labels": [1, 5, 6]}, {"input_ids": [1, 7], "labels": [1, 7]}]
    packed = DataCollatorForVLMPadFree()(items)
    assert packed["labels"].tolist() == [[-100, 5, 6, -100, 7]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert "pixel_values" not in packed


def test_length_grouped_indices_is_a_permutation_with_homogeneous_batches():
    lengths = [5] * 40 + [500] * 40
    order = length_grouped_indices(lengths, batch_size=8, seed=1, mega_batch_mult=10)
    assert sorted(order) == list(range(80))
    batches = [order[i : i + 8] for i in range(0, 80, 8)]
    assert all(len({lengths[i] for i in batch}) == 1 for batch in batches)
    assert order != length_grouped_indices(lengths, batch_size=8, seed=2, mega_batch_mult=10)


def _loss_and_grads(batch, labelled: bool, extra: dict):
    model, _ = build_preset_model("tiny", seed=0)
    model.train()
    model.labelled_logits_only = labelled
    out = model(**batch, **extra)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("num_items_in_batch", [None, 11])
def test_labelled_logits_only_gives_the_same_loss_and_gradients(packed, num_items_in_batch):
    _, processor = build_preset_model("tiny", seed=0)
    items = _items(processor)
    if packed:
        batch = DataCollatorForVLMPadFree()(items)
    else:
        batch = DataCollatorForVLM(pad_token_id=processor.tokenizer.pad_token_id)(items)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < labelled < batch["labels"].numel() / 3  # mostly prompt and image: the case it is for
    extra = {} if num_items_in_batch is None else {"num_items_in_batch": torch.tensor(num_items_in_batch)}
    full, full_grads = _loss_and_grads(batch, False, extra)
    ours, our_grads = _loss_and_grads(batch, True, extra)
    assert full.logits.shape[:2] == batch["input_ids"].shape and ours.logits is None
    torch.testing.assert_close(ours.loss, full.loss, rtol=1e-6, atol=1e-6)
    assert set(our_grads) == set(full_grads)
    for name, grad in full_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_labelled_logits_only_leaves_eval_alone_and_refuses_other_heads():
    model, processor = build_preset_model("tiny", seed=0)
    model.labelled_logits_only = True
    batch = DataCollatorForVLM(pad_token_id=processor.tokenizer.pad_token_id)(_items(processor))
    with torch.no_grad():
        out = model.eval()(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape and out.loss is not None
    model.config.text_config.model_type = "gemma2"  # soft-capped logits: not lm_head(hidden) alone
    with pytest.raises(ValueError, match="not 'gemma2'"):
        model.train()(**batch)
