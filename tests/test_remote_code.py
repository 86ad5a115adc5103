"""A saved folder serves the model through the Auto classes with trust_remote_code, without tinyvlm."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import transformers
from conftest import run_python

pytestmark = pytest.mark.compat

IS_V5 = int(transformers.__version__.split(".")[0]) >= 5

LOAD_AND_ASK = """
import json, sys, torch, transformers
from PIL import Image
from transformers import AutoProcessor
path, auto_name = sys.argv[1] if len(sys.argv) > 1 else {path!r}, {auto_name!r}
model = getattr(transformers, auto_name).from_pretrained(path, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
msgs = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What colour?"}}]}}]
prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
batch = processor(images=[Image.new("RGB", (30, 20), (255, 0, 0))], text=[prompt], return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits[0, -1]
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, min_new_tokens=4)
print(json.dumps({{
    "module": type(model).__module__, "processor": type(processor).__name__,
    "new_tokens": out[0, batch["input_ids"].shape[1]:].tolist(),
    "answer": processor.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)[0],
    "logits": logits.tolist(),
}}))
"""


def _ask(folder, auto_name, python=None) -> dict:
    result = run_python(LOAD_AND_ASK.format(path=str(folder), auto_name=auto_name), python=python)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_config_auto_map_names_both_model_classes(tiny_folder):
    config = json.loads((tiny_folder / "config.json").read_text())
    assert (
        config["auto_map"]["AutoModelForImageTextToText"]
        == "modeling_tinyvlm.TinyVLMForConditionalGeneration"
    )
    assert config["auto_map"]["AutoModelForVision2Seq"] == "modeling_tinyvlm.TinyVLMForConditionalGeneration"
    for name in ("configuration_tinyvlm.py", "modeling_tinyvlm.py", "processing_tinyvlm.py"):
        assert (tiny_folder / name).exists(), name


@pytest.mark.parametrize(
    "auto_name", ["AutoModelForImageTextToText"] + ([] if IS_V5 else ["AutoModelForVision2Seq"])
)
def test_remote_code_loads_and_generates_without_the_package(tiny_folder, auto_name):
    result = _ask(tiny_folder, auto_name)
    assert result["module"].startswith("transformers_modules."), "must come from the folder's code files"
    assert result["processor"] == "TinyVLMProcessor"
    assert len(result["new_tokens"]) == 4


@pytest.mark.skipif(not IS_V5, reason="the image-text-to-text pipeline with remote code is checked on 5.x")
def test_pipeline_answers(tiny_folder):
    code = textwrap.dedent(
        f"""
        from PIL import Image
        from transformers import pipeline
        pipe = pipeline("image-text-to-text", model={str(tiny_folder)!r}, trust_remote_code=True)
        msgs = [{{"role": "user", "content": [{{"type": "image", "image": Image.new("RGB", (20, 20), "red")}},
                                              {{"type": "text", "text": "What colour?"}}]}}]
        out = pipe(text=msgs, max_new_tokens=3, do_sample=False)
        print(type(out[0]["generated_text"]).__name__)
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] in ("list", "str")


OTHER_PYTHON = os.environ.get("TINYVLM_OTHER_PYTHON")


@pytest.mark.skipif(
    not OTHER_PYTHON, reason="set TINYVLM_OTHER_PYTHON to a python with the other transformers line"
)
def test_folder_saved_here_loads_in_the_other_transformers_with_identical_logits(tiny_folder):
    other_auto = "AutoModelForImageTextToText"
    here, there = (
        _ask(tiny_folder, "AutoModelForImageTextToText"),
        _ask(tiny_folder, other_auto, OTHER_PYTHON),
    )
    assert here["logits"] == there["logits"]
    assert here["new_tokens"] == there["new_tokens"]


@pytest.mark.skipif(
    not OTHER_PYTHON, reason="set TINYVLM_OTHER_PYTHON to a python with the other transformers line"
)
def test_folder_saved_by_the_other_transformers_loads_here_with_identical_logits(tmp_path):
    folder = tmp_path / "other"
    code = f"from tinyvlm.conversion.build import build_preset; build_preset('tiny', {str(folder)!r}, seed=3)"
    import subprocess

    done = subprocess.run([OTHER_PYTHON, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    here, there = (
        _ask(folder, "AutoModelForImageTextToText"),
        _ask(folder, "AutoModelForImageTextToText", OTHER_PYTHON),
    )
    assert here["logits"] == there["logits"]
    assert here["new_tokens"] == there["new_tokens"]
