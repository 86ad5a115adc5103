"""`tinyvlm merge`: LoRA adapter + base -> a standalone folder whose logits are the PEFT model's."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import solid_image, user_prompt
from tinyvlm.training import synthetic
from tinyvlm.training.merge import adapter_base, main, merge_adapter
from tinyvlm.training.train import TRAINING_RECORD
from tinyvlm.training.train import main as train_main

from tinyvlm import TinyVLMForConditionalGeneration

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def adapter(tiny_folder, tmp_path_factory):
    """A phase 3 adapter trained for a few steps at a high learning rate (LoRA B is non-zero)."""
    root = tmp_path_factory.mktemp("merge")
    data = synthetic.write_synthetic_vqa(root / "data", num_train=16, num_eval=1, image_size=32)
    output = root / "adapter"
    argv = [
        "--phase", "lora", "--model_name_or_path", str(tiny_folder), "--data_path", data["train"],
        "--image_folder", data["image_folder"], "--output_dir", str(output), "--max_steps", "3",
        "--learning_rate", "5e-2", "--lora_r", "4", "--lora_alpha", "8", "--lora_o_proj", "True",
        "--per_device_train_batch_size", "4", "--save_strategy", "no", "--report_to", "none",
        "--log_level", "warning", "--disable_tqdm", "True", "--dataloader_pin_memory", "False",
    ]  # fmt: skip
    train_main(argv)
    return output


def inputs(processor):
    prompts = [user_prompt(processor, "What colour is the shape?"), user_prompt(processor, "How many?")]
    images = [solid_image((255, 0, 0)), solid_image((0, 0, 255))]
    return processor(images=images, text=prompts, return_tensors="pt", padding=True)


def test_merged_logits_equal_the_peft_models(tiny, tiny_folder, adapter, tmp_path):
    _, processor = tiny
    batch = inputs(processor)
    base = TinyVLMForConditionalGeneration.from_pretrained(tiny_folder).eval()
    with torch.no_grad():
        base_logits = base(**batch).logits
    peft_model = peft.PeftModel.from_pretrained(base, adapter).eval()
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b), (
        "the adapter learned nothing: the test would be vacuous"
    )
    with torch.no_grad():
        peft_logits = peft_model(**batch).logits
    assert not torch.allclose(peft_logits, base_logits, atol=1e-4)

    merged_dir = merge_adapter(str(adapter), str(tmp_path / "merged"))
    merged = TinyVLMForConditionalGeneration.from_pretrained(merged_dir).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        merged_logits = merged(**batch).logits
    torch.testing.assert_close(merged_logits, peft_logits, rtol=1e-4, atol=1e-5)


def test_cli_writes_a_standalone_folder_with_the_training_record(tiny_folder, adapter, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    output = tmp_path / "standalone"
    assert main([str(adapter), "--output", str(output)]) == 0
    for name in (
        "model.safetensors",
        "config.json",
        "modeling_tinyvlm.py",
        "tokenizer.json",
        "processor_config.json",
    ):
        assert (output / name).is_file(), name
    assert not (output / "adapter_config.json").exists()
    record = json.loads((output / TRAINING_RECORD).read_text())
    assert record["phase"] == "lora" and record["merged"]["base"] == str(tiny_folder.resolve())
    model = AutoModelForImageTextToText.from_pretrained(output, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    assert model.config.model_type == "tinyvlm" and processor.image_token == "<image>"
    with pytest.raises(FileExistsError):
        main([str(adapter), "--output", str(output)])


def test_base_comes_from_the_adapter_config_unless_given(tiny_folder, adapter, tmp_path):
    assert adapter_base(str(adapter)) == str(tiny_folder.resolve())
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="--base"):
        merge_adapter(str(moved), str(tmp_path / "out"))
    merged = merge_adapter(str(moved), str(tmp_path / "out"), base=str(tiny_folder), dtype="bfloat16")
    assert TinyVLMForConditionalGeneration.from_pretrained(merged).dtype == torch.bfloat16


def test_not_an_adapter_folder_is_refused(tiny_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        merge_adapter(str(tiny_folder), str(tmp_path / "out"))
