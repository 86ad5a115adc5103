"""`tinyvlm card`: front matter the Hub accepts, every number read from the folder's files, robust to
missing files, and a usage snippet that really runs against the folder in a fresh process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from tinyvlm.model_card import card
from tinyvlm.training.vqa_eval import compute_vqa_metrics

from tinyvlm import cli

LLM_ID = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
VISION_ID = "google/siglip-so400m-patch14-384"
# Deliberately odd sizes, so that a number typed into the template could not match by accident.
CONFIG = {
    "model_type": "tinyvlm",
    "vision_config": {"model_type": "siglip_vision_model", "_name_or_path": VISION_ID, "hidden_size": 52,
                      "num_hidden_layers": 3, "image_size": 56, "patch_size": 7},
    "text_config": {"model_type": "llama", "_name_or_path": LLM_ID, "hidden_size": 76, "num_hidden_layers": 5,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1013,
                    "max_position_embeddings": 333},
    "projector_hidden_size": 94,
    "projector_hidden_act": "gelu",
    "vision_feature_layer": -2,
    "image_token_id": 1011,
}  # fmt: skip


def _metrics() -> dict:
    metrics = compute_vqa_metrics(
        ["yes", "2", "cat", "no"],
        [["yes"] * 10, ["2"] * 2 + ["3"] * 8, ["dog"] * 10, ["yes"] * 10],
        answer_types=["yes/no", "number", "other", "yes/no"],
        question_types=["is the", "how many", "what is", "is the"],
    )
    metrics["eval_config"] = {"dataset_name": "synthetic-shapes-vqa", "data": "val.jsonl", "split": "validation",
                              "source": "model", "prompt_suffix": "Answer briefly.", "max_new_tokens": 7,
                              "batch_size": 9}  # fmt: skip
    return metrics


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """A folder with every file the card reads, weights as tiny tensors of known shapes."""
    folder = tmp_path / "tinyvlm-test"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    save_file(
        {"vision_tower.w": torch.zeros(3, 7), "multi_modal_projector.linear_1.weight": torch.zeros(5, 5),
         "language_model.model.embed_tokens.weight": torch.zeros(11, 13)},
        str(folder / "model.safetensors"),
    )  # fmt: skip
    (folder / "processor_config.json").write_text(json.dumps({"image_seq_length": 64}))
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": 37}))
    record = {"phase": "lora", "freeze_vision_tower": True, "learning_rate": 0.000217, "num_train_epochs": 3,
              "lora": {"r": 19, "alpha": 38}, "data": {"rows_total": 4321}, "data_path": "/home/me/secret/data.json",
              "merged": {"adapter": "/home/me/out/phase3", "base": "/home/me/out/phase2"}}  # fmt: skip
    (folder / "tinyvlm_training.json").write_text(json.dumps(record))
    (folder / "trainer_state.json").write_text(
        json.dumps(
            {
                "global_step": 811,
                "epoch": 3.0,
                "log_history": [{"loss": 2.5}, {"loss": 1.234}, {"train_loss": 1.9}],
            }
        )
    )
    (folder / "training_args.json").write_text(
        json.dumps({"learning_rate": 0.5, "warmup_ratio": 0.031, "seed": 4242})
    )
    (folder / "metrics.json").write_text(json.dumps(_metrics()))
    return folder


def _front_matter(text: str) -> dict:
    return ModelCard(text).data.to_dict()


def test_front_matter_parses_and_holds_the_eval_results(model_folder):
    text = card.render_card(model_folder)
    parsed = ModelCard(text)
    data = parsed.data.to_dict()
    assert data["base_model"] == [LLM_ID, VISION_ID]
    assert data["pipeline_tag"] == "image-text-to-text"
    assert data["library_name"] == "transformers"
    assert data["license"] == "apache-2.0"
    results = {r.metric_type: r for r in parsed.data.eval_results}
    metrics = _metrics()
    assert results["vqa_accuracy"].metric_value == metrics["vqa_accuracy"]
    assert results["exact_match"].metric_value == metrics["exact_match"]
    assert results["yes_no_f1"].metric_value == metrics["yes_no_f1"]
    assert results["vqa_accuracy"].dataset_name == "synthetic-shapes-vqa"
    assert results["vqa_accuracy"].task_type == "visual-question-answering"
    # model-index is what the Hub reads; it must survive a YAML round trip
    assert data["model-index"][0]["results"][0]["metrics"]


def test_numbers_in_the_card_come_from_the_files(model_folder):
    text = card.render_card(model_folder)
    body = text.split("---", 2)[2]
    for expected in ["| 56 |", "| 7 |", "| 64 |", "52 -> 94 -> 76", "| 1013 |", "| 333 |", "| 1011 |",
                     "| vision tower | 21 |", "| projector | 25 |", "| language model | 143 |", "| total | 189 |",
                     "| lora / r | 19 |", "| data / rows total | 4321 |", "| optimizer steps | 811 |",
                     "| final logged loss | 1.23 |", "| warmup ratio | 0.03 |", "| seed | 4242 |",
                     "| number | 60.00 |", "| max new tokens | 7 |", "| questions | 4 |"]:  # fmt: skip
        assert expected in body, expected
    assert f"| VQA accuracy | {_metrics()['vqa_accuracy']:.2f} |" in body
    # the run record's learning rate wins over training_args.json's, and shows once
    assert body.count("learning rate") == 1 and "0.000217" in body
    assert "The vision tower stayed frozen" in body and "merged into the base weights" in body
    # local paths from the training record stay out of a card meant for the Hub
    assert "/home/me" not in text


def test_template_prose_holds_no_typed_number():
    """A number typed into the template drifts from the model (the nanoVLM README problem)."""
    template = card.TEMPLATE.read_text()
    prose = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", "", template, flags=re.S)
    assert not re.findall(r"\d", prose)


def test_missing_optional_files_still_render(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "tinyvlm", "vision_config": {}, "text_config": {}})
    )
    text = card.render_card(tmp_path)
    data = _front_matter(text)
    assert "model-index" not in data and "base_model" not in data
    assert "No training record was found" in text and "No `metrics.json`" in text
    assert "max_new_tokens=" in text  # no generation_config.json: the snippet bounds generation itself


def test_local_sub_config_paths_are_not_base_models(tmp_path):
    config = json.loads(json.dumps(CONFIG))
    config["text_config"]["_name_or_path"] = str(tmp_path)
    config["vision_config"]["_name_or_path"] = "./siglip"
    config["base_models"] = {"llm": "me/my-llm"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _front_matter(card.render_card(tmp_path))["base_model"] == ["me/my-llm"]


def test_adapter_folder_card_names_its_base(tmp_path):
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": "language_model.*(q_proj|v_proj)",
                    "base_model_name_or_path": "me/tinyvlm-base"})
    )  # fmt: skip
    text = card.render_card(tmp_path)
    data = _front_matter(text)
    assert data["library_name"] == "peft" and data["base_model"] == ["me/tinyvlm-base"]
    assert "PeftModel.from_pretrained" in text and "| rank | 8 |" in text
    assert "Training phase: LoRA" in text


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither config.json nor adapter_config.json"):
        card.render_card(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        card.render_card(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match="model_type is 'llava'"):
        card.render_card(tmp_path)


def test_card_command_writes_readme_atomically(model_folder, capsys):
    assert cli.main(["card", str(model_folder), "--repo-id", "me/tinyvlm-test"]) == 0
    readme = (model_folder / "README.md").read_text()
    assert 'path = "me/tinyvlm-test"' in readme
    assert not [p for p in model_folder.iterdir() if p.name.startswith(".")]
    assert "README.md" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The snippet against a real (tiny, random) model folder
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    build = pytest.importorskip(
        "tinyvlm.conversion.build", reason="the model builder is not in this checkout"
    )
    return Path(build.build_preset("tiny", tmp_path_factory.mktemp("tiny") / "model"))


def test_usage_snippet_runs_against_the_folder_in_a_fresh_process(tiny_model_dir, tmp_path):
    card.write_card(tiny_model_dir)
    readme = (tiny_model_dir / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, flags=re.S).group(1)
    assert str(tiny_model_dir) in snippet
    (tmp_path / "snippet.py").write_text(snippet)
    # A fresh interpreter outside the repo: the classes must come from the folder's remote code.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        [sys.executable, str(tmp_path / "snippet.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _front_matter(readme)["pipeline_tag"] == "image-text-to-text"
