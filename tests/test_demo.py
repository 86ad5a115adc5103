"""`tinyvlm demo --quick`: the whole offline path (data, stand-ins, phase 2, phase 3 + merge, phase 4,
card, reload through the Auto classes) on a few rows. The numbers mean nothing at this size; the full
demo's accuracy is checked by running `tinyvlm demo` (scripts/demo.sh)."""

from __future__ import annotations

import json

from tinyvlm.training.demo import describe, main


def test_quick_demo_runs_end_to_end_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--output", str(out), "--quick"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"untrained", "phase2", "phase3", "chance"}
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    assert 0.25 < metrics["chance"] < 0.34  # 1/4 for colour, 1/3 for the other question types
    for name in (
        "model.safetensors",
        "README.md",
        "metrics.json",
        "tinyvlm_training.json",
        "modeling_tinyvlm.py",
    ):
        assert (out / "final" / name).is_file(), name
    for stage in ("untrained", "phase2", "phase3"):
        assert (out / "eval" / stage / "predictions.jsonl").is_file()
    assert (out / "phase3" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "phase2" / "tinyvlm_training.json").read_text())["phase"] == "projector"
    printed = capsys.readouterr().out
    assert "stand-ins" in printed and "after phase 3" in printed and "chance" in printed
    assert (out / "fresh.png").is_file()
    # a second run over the same folder replaces its outputs instead of failing
    assert main(["--output", str(out), "--quick"]) == 0


def test_scene_description_names_everything_the_questions_ask():
    import random

    scene = {"shape": "circle", "colour": "red", "columns": [0], "count": 1}
    words = set(describe(scene, random.Random(0)).split())
    assert words == {"red", "circle", "1", "left"}
