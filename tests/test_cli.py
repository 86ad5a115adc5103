"""The `tinyvlm` command: help, build --preset, ask, one-line errors."""

from __future__ import annotations

import json

import pytest

from tinyvlm.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_fails(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.compat
def test_build_preset_tiny_writes_a_complete_folder(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["build", "--preset", "tiny", "--output", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    for name in (
        "config.json",
        "model.safetensors",
        "modeling_tinyvlm.py",
        "configuration_tinyvlm.py",
        "processing_tinyvlm.py",
        "tokenizer.json",
        "preprocessor_config.json",
        "generation_config.json",
    ):
        assert name in names, name
    assert json.loads((out / "config.json").read_text())["model_type"] == "tinyvlm"
    assert [p.name for p in tmp_path.iterdir()] == ["m"], "no temp folder left behind"
    # a second build refuses to overwrite without --overwrite, with a one-line error
    assert main(["build", "--preset", "tiny", "--output", str(out)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err


@pytest.mark.compat
def test_ask_streams_an_answer(tiny_folder, tmp_path, capsys):
    from conftest import solid_image

    image = tmp_path / "red.png"
    solid_image().save(image)
    argv = [
        "ask",
        "--model",
        str(tiny_folder),
        "--image",
        str(image),
        "--max_new_tokens",
        "4",
        "What colour?",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() != ""


def test_ask_missing_image_is_a_one_line_error(tiny_folder, capsys):
    argv = ["ask", "--model", str(tiny_folder), "--image", "/nonexistent.png", "What?"]
    assert main(argv) == 1
    assert "image file /nonexistent.png not found" in capsys.readouterr().err
