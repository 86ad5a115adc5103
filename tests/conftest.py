"""Shared fixtures: a tiny random tinyvlm model + processor (offline tokenizer), and its saved folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from tinyvlm.conversion.build import build_preset, build_preset_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def solid_image(rgb=(255, 0, 0), size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def user_prompt(processor, question: str, num_images: int = 1) -> str:
    content = [{"type": "image"}] * num_images + [{"type": "text", "text": question}]
    return processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


@pytest.fixture(scope="session")
def tiny():
    """(model, processor) of the tiny preset, fp32, eval mode."""
    torch.manual_seed(0)
    return build_preset_model("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    build_preset("tiny", path, seed=0)
    return path


def run_python(code: str, python: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter where the installed `tinyvlm` package cannot be imported, so
    only the remote-code path (the files inside a saved folder) can serve the model."""
    blocker = "import sys; sys.modules['tinyvlm'] = None\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run(
        [python or sys.executable, "-c", blocker + code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
    )
