"""Padding-free batches: the rows of a batch packed into one sequence, and length grouping.

LLaVA-style data mixes many short rows (one-word answers) with a few long multi-turn ones, so padded
batches spend most of their compute on padding. `DataCollatorForVLMPadFree` concatenates the rows into
`input_ids` (1, total) with `position_ids` restarting at 0 for each row and no `attention_mask`:
transformers then builds a block-diagonal causal mask from the position ids (sdpa, eager, flex) or
passes per-row lengths to flash_attention_2, so no row attends to another. The first label of each row
is -100, so the last token of one row is never trained to predict the next row: the loss is the padded
loss over the same labelled tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class DataCollatorForVLMPadFree:
    """Same items as `DataCollatorForVLM` (input_ids, labels, pixel_values per row), packed."""

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, labels, position_ids = [], [], []
        for example in examples:
            ids = torch.as_tensor(example["input_ids"], dtype=torch.long)
            row_labels = torch.as_tensor(example["labels"], dtype=torch.long).clone()
            row_labels[0] = IGNORE_INDEX
            input_ids.append(ids)
            labels.append(row_labels)
            position_ids.append(torch.arange(len(ids), dtype=torch.long))
        batch = {
            "input_ids": torch.cat(input_ids).unsqueeze(0),  # (1, total)
            "labels": torch.cat(labels).unsqueeze(0),
            "position_ids": torch.cat(position_ids).unsqueeze(0),
        }
        pixel_values = [e["pixel_values"] for e in examples if e.get("pixel_values") is not None]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values)  # images in row order, as the model expects
        return batch


def length_grouped_indices(
    lengths: list[int], batch_size: int, seed: int = 0, mega_batch_mult: int = 50
) -> list[int]:
    """A shuffled order whose consecutive `batch_size` rows have similar lengths (less padding).

    Shuffle, cut into mega-batches of `mega_batch_mult * batch_size` rows, sort each by length
    (longest first), then shuffle the order of the batches so long batches do not all come first.
    Text-only and image rows differ a lot in length, so this also groups by modality in effect.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * mega_batch_mult
    batches = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]
