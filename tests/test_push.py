"""`tinyvlm push`: the allow list (weights, configs, code, processor, card, metrics go up; optimizer
states, pickles and checkpoints stay), the refusals, and a push against a stubbed Hub API that must
send exactly the planned files without the token ever being written or logged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file
from tinyvlm.model_card import push

from tinyvlm import cli

SENTINEL = "hf_SENTINELtokenNEVERwrite1234567890"

EXPECTED = sorted(
    [
        "README.md", "added_tokens.json", "chat_template.jinja", "config.json", "configuration_tinyvlm.py",
        "generation_config.json", "metrics.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "modeling_tinyvlm.py",
        "preprocessor_config.json", "processing_tinyvlm.py", "processor_config.json",
        "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
    ]
)  # fmt: skip
LEFT_OUT = {
    "optimizer.pt": "optimizer/scheduler/RNG state",
    "scheduler.pt": "optimizer/scheduler/RNG state",
    "rng_state.pth": "optimizer/scheduler/RNG state",
    "training_args.bin": "training arguments (pickled)",
    "pytorch_model.bin": "pickled weights",
    "trainer_state.json": "not needed to load the model",
    "predictions.jsonl": "not needed to load the model",
    "checkpoint-500/": "training checkpoint",
    "runs/": "sub-folder (only top-level files go up)",
    ".gitattributes": "hidden file",
}


def _weights(path: Path, name: str = "w") -> None:
    save_file({name: torch.zeros(4, 4)}, str(path))


@pytest.fixture
def training_output(tmp_path: Path) -> Path:
    """A trainer output folder: a sharded model plus everything that must not be pushed."""
    folder = tmp_path / "model"
    folder.mkdir()
    _weights(folder / "model-00001-of-00002.safetensors", "a")
    _weights(folder / "model-00002-of-00002.safetensors", "b")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in EXPECTED:
        if not (folder / name).exists():
            (folder / name).write_text("{}" if name.endswith(".json") else "x")
    for name in LEFT_OUT:
        if name.endswith("/"):
            (folder / name).mkdir()
            _weights(folder / name / "model.safetensors")
        else:
            (folder / name).write_bytes(b"pickle")
    return folder


def test_plan_includes_exactly_the_allow_list(training_output):
    plan = push.plan_upload(training_output)
    assert sorted(name for name, _ in plan.included) == EXPECTED
    assert dict(plan.excluded) == LEFT_OUT
    push.check_plan(plan)


def test_dry_run_lists_what_would_go_up_with_sizes(training_output, capsys):
    assert cli.main(["push", str(training_output), "--repo-id", "me/model", "--dry-run"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("left out")[0].splitlines()[1:]]
    assert sorted(listed) == EXPECTED
    assert f"would upload {len(EXPECTED)} file(s)" in out
    assert "optimizer.pt" in out.split("left out")[1] and "checkpoint-500/" in out.split("left out")[1]
    size_line = next(line for line in out.splitlines() if line.strip().startswith("model-00001"))
    assert size_line.rstrip().endswith(" B") or size_line.rstrip().endswith("KB")


class FakeApi:
    """Records what a push sends, in the shape of HfApi's methods."""

    calls: list[tuple[str, tuple, dict]] = []

    def __init__(self, *args, **kwargs):
        FakeApi.calls.append(("__init__", args, kwargs))

    def create_repo(self, *args, **kwargs):
        FakeApi.calls.append(("create_repo", args, kwargs))

    def create_branch(self, *args, **kwargs):
        FakeApi.calls.append(("create_branch", args, kwargs))

    def create_commit(self, *args, **kwargs):
        FakeApi.calls.append(("create_commit", args, kwargs))
        return huggingface_hub.CommitInfo(
            commit_url="https://huggingface.co/me/model/commit/abc", commit_message=kwargs["commit_message"],
            commit_description="", oid="abc", pr_url=None,
        )  # fmt: skip


def _all_text_under(folder: Path) -> str:
    return "\n".join(path.read_bytes().decode("latin-1") for path in folder.rglob("*") if path.is_file())


def test_push_sends_only_the_planned_files_and_never_the_token(training_output, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls = []
    caplog.set_level(logging.DEBUG)
    argv = ["push", str(training_output), "--repo-id", "me/model", "--private", "--revision", "phase3",
            "--commit-message", "phase 3 adapter"]  # fmt: skip
    assert cli.main(argv) == 0

    calls = {name: (args, kwargs) for name, args, kwargs in FakeApi.calls}
    assert calls["create_repo"] == (("me/model",), {"private": True, "repo_type": "model", "exist_ok": True})
    assert calls["create_branch"][1]["branch"] == "phase3"
    args, kwargs = calls["create_commit"]
    sent = sorted(op.path_in_repo for op in kwargs["operations"])
    assert sent == EXPECTED
    assert kwargs["revision"] == "phase3" and kwargs["commit_message"] == "phase 3 adapter"
    for op in kwargs["operations"]:
        assert Path(op.path_or_fileobj).parent == training_output
    # the token is left to huggingface_hub's own resolution: never passed, never written, never logged
    assert all("token" not in kw for _, _, kw in FakeApi.calls)
    captured = capsys.readouterr()
    assert SENTINEL not in captured.out + captured.err + caplog.text
    assert SENTINEL not in _all_text_under(training_output.parent)
    assert "https://huggingface.co/me/model/commit/abc" in captured.out


def test_injected_api_object_is_used(training_output):
    FakeApi.calls = []
    info = push.push_folder(training_output, "me/model", api=FakeApi())
    assert info.oid == "abc"
    assert [name for name, _, _ in FakeApi.calls] == ["__init__", "create_repo", "create_commit"]


def test_pickled_weights_only_are_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    assert cli.main(["push", str(tmp_path), "--repo-id", "me/model", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "pickled weights only (pytorch_model.bin)" in err and "safe_serialization=True" in err


def test_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights"):
        push.check_plan(push.plan_upload(tmp_path))
    with pytest.raises(FileNotFoundError):
        push.plan_upload(tmp_path / "missing")


def test_index_naming_a_missing_shard_is_refused(training_output):
    (training_output / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match="missing from the folder: model-00002-of-00002.safetensors"):
        push.check_plan(push.plan_upload(training_output))


def test_adapter_folder_pushes_adapter_files(tmp_path):
    _weights(tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    plan = push.plan_upload(tmp_path)
    push.check_plan(plan)
    assert sorted(name for name, _ in plan.included) == ["adapter_config.json", "adapter_model.safetensors"]
    assert dict(plan.excluded) == {"adapter_model.bin": "pickled weights"}


def test_a_built_model_folder_goes_up_whole(tmp_path):
    """Everything `tinyvlm build` writes is needed to load the model: nothing may be left out."""
    build = pytest.importorskip(
        "tinyvlm.conversion.build", reason="the model builder is not in this checkout"
    )
    folder = Path(build.build_preset("tiny", tmp_path / "tiny"))
    plan = push.plan_upload(folder)
    push.check_plan(plan)
    assert plan.excluded == []
    assert {"config.json", "model.safetensors", "modeling_tinyvlm.py"} <= {name for name, _ in plan.included}
