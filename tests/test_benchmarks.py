"""Smoke tests of the benchmark scripts on the tiny preset: they run end to end and report what they
promise. No timing is asserted (the machine may be busy); the identity check is."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

BENCHMARKS = os.path.join(REPO, "benchmarks")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_alternate_swaps_the_order_every_round():
    common = _load("common")
    calls = []
    sides = {side: (lambda side=side: calls.append(side) or {"t": 1.0}) for side in ("a", "b")}
    result = common.alternate(sides, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert result == {"a": {"t": [1.0] * 3}, "b": {"t": [1.0] * 3}}
    assert common.compare([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])["ratio_median"] == 1.0


def test_inference_quick_reports_identical_outputs_and_ratios(tmp_path, capsys):
    inference = _load("inference")
    out, plot = tmp_path / "inference.json", tmp_path / "inference.png"
    argv = ["--quick", "--repeats", "1", "--new_tokens", "3", "--batch_sizes", "1,4"]
    argv += ["--threads", str(torch.get_num_threads()), "--json", str(out), "--plot", str(plot)]
    assert inference.main(argv) == 0
    printed = capsys.readouterr().out
    assert "machine:" in printed and "greedy tokens equal: True" in printed
    result = json.loads(out.read_text())
    tiny = result["configs"]["tiny"]
    assert tiny["identical"]["logits_within_1e-5"] and tiny["identical"]["greedy_tokens_equal"]
    assert set(result["ratios"]["tiny"]) == {
        "prefill_s",
        "vision_s",
        "decode_s_per_token",
        "batch1_s",
        "batch4_s",
        "peak_memory",
    }
    assert all(r > 0 for r in result["ratios"]["tiny"].values())
    assert tiny["memory"]["tinyvlm"]["peak_bytes"] > 0
    assert plot.stat().st_size > 0


def test_inference_rejects_an_unknown_config():
    inference = _load("inference")
    with pytest.raises(ValueError, match="unknown config"):
        inference.parse_args(["--configs", "tiny,huge"])


def test_plan_memory_check_runs_one_tiny_case(tmp_path, capsys):
    check = _load("plan_memory_check")
    out = tmp_path / "check.json"
    argv = ["--preset", "tiny", "--cases", "lora-fp32-gc", "--threads", "1", "--json", str(out)]
    assert check.main(argv) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["measured"]["peak_bytes"] > 0 and row["planned"]["peak_bytes"] > 0
    assert "planned / measured" in capsys.readouterr().out


def test_gpu_script_rehearses_every_check_on_cpu(tmp_path):
    """benchmarks/gpu.py is for a device session: its CPU rehearsal runs each check's code path (the
    Trainer's LoRA preparation and checkpointing, the VQA eval's generate) so none fails there first.
    Static cache + compile included (about 20 s of compiling the tiny model)."""
    out = tmp_path / "gpu.json"
    argv = [sys.executable, os.path.join(BENCHMARKS, "gpu.py"), "--device", "cpu", "--quick"]
    proc = subprocess.run([*argv, "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    checks = json.loads(out.read_text())["checks"]
    assert set(checks) == {
        "flash_tiny",
        "decode_batch1",
        "prefill",
        "phase4_batch",
        "phase3_memory",
        "phase3_memory_full_logits",
        "phase3_memory_batch16",
        "decode_batch1_static_compile",
        "phase4_batch_static_compile",
    }
    assert not [name for name, check in checks.items() if "error" in check]
    assert checks["flash_tiny"]["skipped"] == "flash_attention_2 needs CUDA"
    assert set(checks["decode_batch1"]["tokens_per_s"]) == {"eager", "sdpa"}
    assert set(checks["decode_batch1_static_compile"]["tokens_per_s"]) == {"static+compile"}
    assert checks["phase4_batch"]["questions_per_s"] > 0
    assert checks["phase3_memory"]["planned_peak_gib"] > 0
    assert "failed checks: none" in proc.stdout


def test_gpu_script_refuses_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "gpu.py")], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0 and "needs a CUDA device" in proc.stderr


@pytest.mark.slow
def test_inference_real_preset_outputs_identical(tmp_path):
    """The real-size check the quick path cannot make: fp32 logits within 1e-5 at 1.5B parameters."""
    argv = [sys.executable, os.path.join(BENCHMARKS, "inference.py"), "--configs", "tinyllama-siglip-fp32"]
    argv += ["--repeats", "1", "--new_tokens", "2", "--skip_memory", "--json", str(tmp_path / "r.json")]
    subprocess.run(argv, check=True, timeout=3600)
    result = json.loads((tmp_path / "r.json").read_text())["configs"]["tinyllama-siglip-fp32"]
    assert result["identical"]["logits_within_1e-5"] and result["identical"]["greedy_tokens_equal"]
