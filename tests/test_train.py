"""`tinyvlm train`: arguments and phase defaults, what each phase trains, outputs, resume, QLoRA."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from tinyvlm.training import synthetic
from tinyvlm.training.train import (
    HAS_GROUP_BY_LENGTH,
    PHASE_DEFAULTS,
    TRAINING_RECORD,
    WARMUP_KEY,
    length_sampling,
    lora_target_modules,
    main,
    parse_arguments,
)

REQUIRED = ["--model_name_or_path", "m", "--data_path", "d.json", "--output_dir", "o"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic rows plus one missing image and one text-only row (left out of phase projector)."""
    out = tmp_path_factory.mktemp("train_data") / "shapes"
    paths = synthetic.write_synthetic_vqa(out, num_train=24, num_eval=2, image_size=32, text_only_fraction=0)
    rows = json.loads(open(paths["train"]).read())
    rows.append({"id": "gone", "image": "missing.png", "conversations": rows[0]["conversations"]})
    rows.append(
        {"id": "text", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "red"}]}
    )
    with open(paths["train"], "w") as f:
        json.dump(rows, f)
    return paths


def train_argv(model, data, output, phase, *extra):
    return [
        "--phase", phase, "--model_name_or_path", str(model), "--data_path", data["train"],
        "--image_folder", data["image_folder"], "--output_dir", str(output),
        "--per_device_train_batch_size", "4", "--report_to", "none", "--log_level", "warning",
        "--disable_tqdm", "True", "--dataloader_pin_memory", "False", "--save_strategy", "no", *extra,
    ]  # fmt: skip


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "model.safetensors"))


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def test_phase_defaults_apply_only_where_the_user_did_not_pass_the_flag():
    _, _, args = parse_arguments(["--phase", "projector", *REQUIRED])
    assert args.learning_rate == 1e-3 and getattr(args, WARMUP_KEY) == 0.03
    assert args.lr_scheduler_type == "cosine" and args.num_train_epochs == 1
    _, _, args = parse_arguments(
        ["--phase", "lora", *REQUIRED, "--learning_rate", "5e-5", "--warmup_ratio", "0.1"]
    )
    assert args.learning_rate == 5e-5 and getattr(args, WARMUP_KEY) == 0.1
    assert args.num_train_epochs == PHASE_DEFAULTS["lora"]["num_train_epochs"]
    model_args, _, args = parse_arguments(["--phase", "full", *REQUIRED, "--num_train_epochs", "3"])
    assert args.learning_rate == 2e-5 and args.num_train_epochs == 3 and model_args.freeze_vision_tower


def test_config_file_then_overriding_flags(tmp_path):
    config = tmp_path / "phase3.yaml"
    config.write_text(
        "phase: lora\nmodel_name_or_path: m\ndata_path: d.json\noutput_dir: o\nlora_r: 8\nlearning_rate: 1.0e-4\n"
    )
    model_args, data_args, args = parse_arguments([str(config), "--lora_r", "4"])
    assert model_args.phase == "lora" and model_args.lora_r == 4 and model_args.lora_alpha == 256
    assert args.learning_rate == 1e-4 and getattr(args, WARMUP_KEY) == 0.03  # file value, then phase default
    assert data_args.data_path == "d.json"
    (tmp_path / "bad.json").write_text(json.dumps({"phase": "lora", "lora_rank": 8}))
    with pytest.raises(ValueError, match="lora_rank"):
        parse_arguments([str(tmp_path / "bad.json")])


def test_shipped_phase_configs_parse():
    from tinyvlm.training import train

    folder = os.path.join(os.path.dirname(train.__file__), "configs")
    expected = {
        "phase2_projector.yaml": "projector",
        "phase3_lora.yaml": "lora",
        "phase3_qlora.yaml": "lora",
        "full.yaml": "full",
    }
    for name, phase in expected.items():
        # bf16 needs a GPU unless the run is told it is on the CPU
        model_args, _, args = parse_arguments([os.path.join(folder, name), "--use_cpu", "True"])
        assert model_args.phase == phase and args.bf16 and args.gradient_checkpointing
        # LLaVA-1.5's fine-tuning groups by modality length; its pre-training does not
        assert length_sampling(args) == (None if phase == "projector" else "group_by_length")
    model_args, _, _ = parse_arguments([os.path.join(folder, "phase3_qlora.yaml"), "--use_cpu", "True"])
    assert model_args.bits == 4


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], None),
        (["--group_by_length", "True"], "group_by_length"),  # transformers 4.x's flag
        (["--group_by_length"], "group_by_length"),
        (["--group_by_modality_length=True"], "group_by_length"),  # LLaVA's
        (["--group_by_length", "False"], None),
    ],
)
def test_length_grouping_flags_of_either_transformers_and_llava(flags, expected):
    _, _, args = parse_arguments(["--phase", "lora", *REQUIRED, *flags])
    assert length_sampling(args) == expected


def test_lora_targets_the_language_model_attention_only(tiny):
    """A bare ["q_proj", "v_proj"] also wraps SigLIP's attention; the regex must not."""
    peft = pytest.importorskip("peft")
    model, _ = tiny
    for o_proj in (False, True):
        config = peft.LoraConfig(
            r=2, target_modules=lora_target_modules(o_proj), modules_to_save=["multi_modal_projector"]
        )
        wrapped = peft.get_peft_model(_copy(model), config)
        lora = {n.rsplit(".lora_A", 1)[0] for n, _ in wrapped.named_parameters() if ".lora_A" in n}
        assert lora and all(".language_model." in n for n in lora)
        kinds = {n.rsplit(".", 1)[1] for n in lora}
        assert kinds == ({"q_proj", "v_proj", "o_proj"} if o_proj else {"q_proj", "v_proj"})
        layers = model.config.text_config.num_hidden_layers
        assert len(lora) == layers * len(kinds)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_bad_argument_combinations_are_refused(tiny_folder, data, tmp_path):
    with pytest.raises(ValueError, match="--bits 4"):
        main(train_argv(tiny_folder, data, tmp_path / "o", "projector", "--bits", "4"))
    with pytest.raises(ValueError, match="freeze_vision_tower"):
        main(train_argv(tiny_folder, data, tmp_path / "o", "lora", "--freeze_vision_tower", "False"))


# ---------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------
@pytest.mark.compat
def test_projector_phase_trains_only_the_projector_into_a_complete_folder(tiny_folder, data, tmp_path):
    output = tmp_path / "phase2"
    argv = train_argv(
        tiny_folder,
        data,
        output,
        "projector",
        "--max_steps",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    )
    assert main(argv) == 0
    before, after = weights(tiny_folder), weights(output)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("multi_modal_projector.") for k in changed)
    # a checkpoint and the output carry the processor and the code files
    for folder in (output, output / "checkpoint-2"):
        for name in (
            "config.json",
            "modeling_tinyvlm.py",
            "processing_tinyvlm.py",
            "tokenizer.json",
            "chat_template.jinja",
        ):
            assert (folder / name).is_file(), f"{folder}/{name}"
    assert not (output / "training_args.bin").exists()
    record = json.loads((output / TRAINING_RECORD).read_text())
    assert record["phase"] == "projector" and record["lora"] is None and record["global_batch_size"] == 4
    assert record["data"]["rows_total"] == 26 and record["data"]["rows_skipped"] == 1
    assert record["data"]["text_only_rows_skipped"] == 1 and record["data"]["skipped_by_reason"] == {
        "image_missing": 1
    }
    assert "gone" in (output / "skipped_rows.jsonl").read_text()

    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(output, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    assert (
        model.config.model_type == "tinyvlm" and processor.image_seq_length == model.config.image_seq_length
    )


def test_full_phase_freezes_only_the_vision_tower(tiny_folder, data, tmp_path):
    output = tmp_path / "full"
    argv = train_argv(tiny_folder, data, output, "full", "--max_steps", "2", "--learning_rate", "1e-2")
    main([*argv, "--padding_free", "True"])  # packed batches: the same phase, without padding
    before, after = weights(tiny_folder), weights(output)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"multi_modal_projector", "language_model"}


def test_unfrozen_vision_tower_trains_only_what_runs(tmp_path):
    """Every trainable parameter gets a gradient from one step (what DDP needs without
    find_unused_parameters): the SigLIP layers past vision_feature_layer and the post-layernorm are
    frozen, the layers that run train."""
    from conftest import solid_image, user_prompt
    from tinyvlm.conversion.build import build_preset_model
    from tinyvlm.training.train import ModelArguments, prepare_model
    from transformers import TrainingArguments

    model, processor = build_preset_model("tiny", seed=0)
    args = ModelArguments(model_name_or_path=str(tmp_path), phase="full", freeze_vision_tower=False)
    model = prepare_model(
        model, args, TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    )
    model.train()
    batch = processor(images=[solid_image()], text=[user_prompt(processor, "Colour?")], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None] == []
    used = model.config.num_vision_layers_used
    assert any(n.startswith(f"vision_tower.encoder.layers.{used - 1}.") for n in trainable)
    assert not any(
        n.startswith((f"vision_tower.encoder.layers.{used}.", "vision_tower.post_layernorm"))
        for n in trainable
    )


def test_lora_phase_writes_a_safetensors_adapter_that_loads_on_its_base(tiny_folder, data, tmp_path):
    from peft import PeftModel

    from tinyvlm import TinyVLMForConditionalGeneration

    output = tmp_path / "phase3"
    main(
        train_argv(
            tiny_folder,
            data,
            output,
            "lora",
            "--max_steps",
            "2",
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--lora_o_proj",
            "True",
        )
    )
    assert (output / "adapter_model.safetensors").is_file() and not list(output.glob("*.bin"))
    adapter_config = json.loads((output / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_folder.resolve())
    assert adapter_config["modules_to_save"] == ["multi_modal_projector"]
    record = json.loads((output / TRAINING_RECORD).read_text())
    assert (
        record["lora"]["r"] == 4
        and record["lora"]["alpha"] == 8
        and "o_proj" in record["lora"]["target_modules"]
    )
    assert record["data"]["text_only_rows_skipped"] == 0  # text-only rows train the LLM in phase lora
    model = PeftModel.from_pretrained(TinyVLMForConditionalGeneration.from_pretrained(tiny_folder), output)
    adapter = load_file(output / "adapter_model.safetensors")
    assert any("multi_modal_projector" in k for k in adapter) and not any(
        "vision_tower" in k for k in adapter
    )
    assert model.base_model.model.multi_modal_projector.modules_to_save  # the trained copy is in use


def test_labelled_logits_only_trains_like_full_logits(tiny_folder, data, tmp_path):
    """The Trainer's path (num_items_in_batch, gradient checkpointing, PEFT): the same losses and
    adapter as full-vocabulary logits at every position, and the choice is recorded."""
    runs = {}
    for labelled in ("True", "False"):
        output = tmp_path / f"labelled-{labelled}"
        argv = train_argv(tiny_folder, data, output, "lora", "--max_steps", "3", "--lora_r", "4")
        argv += [
            "--lora_dropout",
            "0",
            "--gradient_checkpointing",
            "True",
            "--labelled_logits_only",
            labelled,
        ]
        assert main(argv) == 0
        runs[labelled] = (json.loads((output / TRAINING_RECORD).read_text()), output)
    (ours, ours_dir), (full, full_dir) = runs["True"], runs["False"]
    assert ours["labelled_logits_only"] is True and full["labelled_logits_only"] is False
    assert ours["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)
    a, b = (
        load_file(ours_dir / "adapter_model.safetensors"),
        load_file(full_dir / "adapter_model.safetensors"),
    )
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)


def test_length_grouped_sampling_decodes_only_the_images_it_trains_on(
    tiny_folder, data, tmp_path, monkeypatch
):
    """The Trainer's length grouping reads the estimated-length column of a length index instead of
    building (and decoding) every row, and the rows it samples are built in the collator."""
    from tinyvlm.training import data as data_module

    opened = []
    load_image = data_module.load_image
    monkeypatch.setattr(data_module, "load_image", lambda *a: opened.append(a) or load_image(*a))
    if HAS_GROUP_BY_LENGTH:  # 4.x
        flag = ["--group_by_length", "True"]
    else:
        flag = ["--train_sampling_strategy", "group_by_length"]
    argv = train_argv(tiny_folder, data, tmp_path / "grouped", "lora", "--max_steps", "1", "--lora_r", "4")
    assert main([*argv, *flag]) == 0
    assert 0 < len(opened) <= 8  # accelerate builds one batch of 4 ahead; 24 rows have images
    assert (tmp_path / "grouped" / "adapter_model.safetensors").is_file()


def test_qlora_keeps_vision_tower_and_projector_unquantised_and_trains_with_checkpointing(
    tiny_folder, data, tmp_path
):
    """4-bit base + LoRA + gradient checkpointing: no "does not require grad" error."""
    pytest.importorskip("bitsandbytes")
    from tinyvlm.training import train as train_module

    captured = {}
    original = train_module.prepare_model

    def spy(model, *args):
        captured["model"] = model
        return original(model, *args)

    train_module.prepare_model = spy
    try:
        argv = train_argv(tiny_folder, data, tmp_path / "qlora", "lora", "--bits", "4", "--max_steps", "1",
                          "--lora_r", "4", "--lora_alpha", "8", "--gradient_checkpointing", "True")  # fmt: skip
        assert main(argv) == 0
    finally:
        train_module.prepare_model = original
    model = captured["model"]
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    assert kinds["language_model.model.layers.0.mlp.up_proj"] == "Linear4bit"
    kept = [
        n for n in kinds if n.startswith(("vision_tower.", "multi_modal_projector.")) or n.endswith("lm_head")
    ]
    linears = [n for n in kept if "Linear" in kinds[n]]
    assert linears and all(kinds[n] == "Linear" for n in linears), {n: kinds[n] for n in linears}
    assert any("multi_modal_projector" in n for n in linears) and "language_model.lm_head" in linears
    assert (tmp_path / "qlora" / "adapter_model.safetensors").is_file()


def test_resume_from_checkpoint_continues_exactly(tiny_folder, data, tmp_path):
    """A run resumed from its step-2 checkpoint ends with the same weights and losses as one that
    was not interrupted (LoRA dropout on: the RNG state must be restored too)."""
    common = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--logging_steps", "1",
              "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.1", "--learning_rate", "1e-2"]  # fmt: skip
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    main(train_argv(tiny_folder, data, whole, "lora", *common))
    main(
        train_argv(
            tiny_folder,
            data,
            resumed,
            "lora",
            *common,
            "--resume_from_checkpoint",
            str(whole / "checkpoint-2"),
        )
    )
    a, b = load_file(whole / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    losses = [
        [
            e["loss"]
            for e in json.loads((folder / "trainer_state.json").read_text())["log_history"]
            if "loss" in e and e["step"] > 2
        ]
        for folder in (whole, resumed)
    ]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Beyond one machine: accelerate / DeepSpeed configs and slurm scripts
# ---------------------------------------------------------------------------------------------
TRAINING_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training")


def _files(folder, *suffixes):
    path = os.path.join(TRAINING_DIR, folder)
    return sorted(os.path.join(path, name) for name in os.listdir(path) if name.endswith(suffixes))


def test_every_config_file_parses():
    import yaml

    configs = _files("configs", ".yaml", ".json")
    assert len(configs) >= 10
    for path in configs:
        with open(path) as f:
            value = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
        assert isinstance(value, dict) and value, path


def test_accelerate_configs_load_and_name_real_launch_options():
    accelerate = pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    launch_options = {a.dest for a in launch_command_parser()._actions}
    kinds = {}
    for path in _files("configs", ".yaml"):
        if not os.path.basename(path).startswith("accelerate_"):
            continue
        config = ClusterConfig.from_yaml_file(path)  # unknown top-level keys raise
        kinds[os.path.basename(path)] = str(config.distributed_type)
        for key in {**config.fsdp_config, **config.deepspeed_config}:
            assert key in launch_options, (
                f"{path}: {key} is no `accelerate launch` option ({accelerate.__version__})"
            )
        ds_file = config.deepspeed_config.get("deepspeed_config_file")
        if ds_file:
            with open(os.path.join(os.path.dirname(TRAINING_DIR), ds_file)) as f:
                stage = json.load(f)["zero_optimization"]["stage"]
            assert f"zero{stage}" in path
    assert sorted(kinds.values()) == sorted(
        [
            "DistributedType.MULTI_GPU",
            "DistributedType.FSDP",
            "DistributedType.DEEPSPEED",
            "DistributedType.DEEPSPEED",
        ]
    )
    fsdp = ClusterConfig.from_yaml_file(
        os.path.join(TRAINING_DIR, "configs", "accelerate_fsdp.yaml")
    ).fsdp_config
    assert set(fsdp["fsdp_transformer_layer_cls_to_wrap"].split(",")) == {
        "LlamaDecoderLayer",
        "SiglipEncoderLayer",
    }


def test_slurm_scripts_are_valid_bash_and_launch_accelerate_per_node(tmp_path):
    import shutil
    import subprocess

    scripts = _files("slurm", ".sbatch")
    assert {os.path.basename(s) for s in scripts} >= {"phase2_projector.sbatch", "phase3_lora.sbatch"}
    # fake srun (two nodes), scontrol and accelerate: the script's launch lines, rank per node
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        '#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nfor n in 0 1; do SLURM_NODEID=$n "$@"; done\n'
    )
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho node-a\necho node-b\n")
    (bin_dir / "accelerate").write_text('#!/bin/bash\necho "accelerate $*"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    for script in scripts:
        assert subprocess.run(["bash", "-n", script]).returncode == 0, script
        text = open(script).read()
        assert "/home/" not in text and "/scratch" not in text, f"{script}: hard-coded path"
        env = {"PATH": f"{bin_dir}:{os.path.dirname(shutil.which('python') or '/usr/bin/python')}:/usr/bin:/bin",
               "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]", "MODEL": "m", "DATA_PATH": "d.json",
               "IMAGE_FOLDER": "i", "OUTPUT_DIR": "o", "CONFIG_DIR": "/cfg", "GPUS_PER_NODE": "4"}  # fmt: skip
        result = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        launches = [line for line in result.stdout.splitlines() if line.startswith("accelerate ")]
        assert len(launches) == 2
        for rank, line in enumerate(launches):
            assert (
                f"--machine_rank {rank} " in line
                and "--num_machines 2" in line
                and "--num_processes 8" in line
            )
            assert "--main_process_ip node-a" in line and "-m tinyvlm.cli train --phase" in line
        missing = subprocess.run(["bash", script], env={**env, "MODEL": ""}, capture_output=True, text=True)
        assert missing.returncode != 0 and "MODEL" in missing.stderr
