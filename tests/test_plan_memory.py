"""tinyvlm plan-memory: counts against real models and the training code, activations against what
autograd actually saves, verdicts per card, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch
from tinyvlm.conversion.build import build_preset_model, preset_components
from tinyvlm.modeling_tinyvlm import TinyVLMForConditionalGeneration
from tinyvlm.training import plan_memory as pm
from tinyvlm.training.train import ModelArguments, enable_activation_checkpointing, prepare_model
from transformers import TrainingArguments

GIB = 1024**3
# Wider than the tiny preset's text model so that every activation term has a distinct size.
TEXT = {"hidden_size": 96, "intermediate_size": 160, "num_attention_heads": 6, "num_key_value_heads": 2}


def _components(model) -> dict:
    names = ("vision_tower", "multi_modal_projector", "language_model")
    return {n: sum(p.numel() for p in getattr(model, n).parameters()) for n in names}


@pytest.fixture(scope="module")
def real_shape():
    return pm.model_shape(preset_components("tinyllama-siglip")[0])


def _prepared(phase: str, dtype=torch.float32, lora_o_proj=False, tmp="/tmp/plan-memory-test"):
    torch.manual_seed(0)
    model, _ = build_preset_model("tiny", dtype=dtype, text=TEXT)
    args = ModelArguments(model_name_or_path=tmp, phase=phase, lora_o_proj=lora_o_proj)
    return model.config, prepare_model(
        model, args, TrainingArguments(output_dir=tmp, use_cpu=True, report_to=[])
    )


def test_param_counts_equal_a_real_tiny_model():
    model, _ = build_preset_model("tiny")
    assert pm.model_shape(model.config).params == _components(model)


def test_param_counts_equal_the_real_preset_on_meta(real_shape):
    config = preset_components("tinyllama-siglip")[0]
    with torch.device("meta"):
        model = TinyVLMForConditionalGeneration(config)
    assert real_shape.params == _components(model)
    # TinyLlama-1.1B has 1,100,048,384 parameters with 32000 tokens; we add <image> and <pad> rows
    # to the embedding and to lm_head (untied).
    assert real_shape.params["language_model"] == 1_100_048_384 + 2 * 2 * 2048


@pytest.mark.parametrize(
    "phase, lora_o_proj", [("projector", False), ("lora", False), ("lora", True), ("full", False)]
)
def test_trainable_counts_equal_what_prepare_model_trains(phase, lora_o_proj):
    config, model = _prepared(phase, lora_o_proj=lora_o_proj)
    plan = pm.Plan(phase=phase, batch_size=1, seq_len=32, lora_o_proj=lora_o_proj)
    tensors = pm.trainable_tensors(pm.model_shape(config), plan)
    assert sum(n for n, _ in tensors) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_lora_count_on_tinyllama_by_hand(real_shape):
    r, layers = 64, 22
    q_v = layers * r * ((2048 + 2048) + (2048 + 256))  # q_proj 2048->2048, v_proj 2048->256
    projector = real_shape.params["multi_modal_projector"]
    plan = pm.Plan(phase="lora", batch_size=1, seq_len=1024, lora_r=r)
    assert sum(n for n, _ in pm.trainable_tensors(real_shape, plan)) == q_v + projector
    with_o = pm.Plan(phase="lora", batch_size=1, seq_len=1024, lora_r=r, lora_o_proj=True)
    o_proj = layers * r * (2048 + 2048)
    assert sum(n for n, _ in pm.trainable_tensors(real_shape, with_o)) == q_v + o_proj + projector


def _saved_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd saves for backward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    return sum(seen.values())


@pytest.mark.parametrize(
    "phase, dtype, checkpointing, batch_size, labelled_only",
    [
        ("projector", torch.float32, False, 1, True),
        ("lora", torch.float32, False, 2, True),
        ("lora", torch.float32, False, 2, False),
        ("lora", torch.bfloat16, False, 1, True),
        ("lora", torch.bfloat16, True, 2, True),
        ("full", torch.float32, True, 1, True),
        ("full", torch.bfloat16, False, 2, True),
        ("full", torch.bfloat16, False, 2, False),
    ],
)
def test_saved_activations_equal_what_autograd_saves(phase, dtype, checkpointing, batch_size, labelled_only):
    """The activation formulas, term by term, against a real forward pass: K/V repeated under a padding
    mask, the per-layer float mask, RMSNorm's fp32 copies, PEFT's fp32 dropout path and the logits at
    labelled positions only (or at all of them) all count."""
    config, model = _prepared(phase, dtype)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.labelled_logits_only = labelled_only
    if checkpointing:  # as the Trainer does it
        enable_activation_checkpointing(model)
    model.train()
    seq_len, p = 40, config.image_seq_length
    ids = torch.randint(5, config.text_config.vocab_size - 3, (batch_size, seq_len))
    ids[:, 1 : 1 + p] = config.image_token_id
    mask = torch.ones_like(ids)
    if batch_size > 1:  # a padded row: transformers then builds a mask
        mask[-1, -3:] = 0
    labels = ids.clone()
    labels[:, : 1 + p + 4] = -100  # the prompt: image and question
    labelled = int((labels[:, 1:] != -100).sum())
    pixels = torch.randn(batch_size, 3, 32, 32, dtype=dtype)
    measured = _saved_bytes(
        model, {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}
    )
    plan = pm.Plan(
        phase=phase,
        batch_size=batch_size,
        seq_len=seq_len,
        precision="bf16" if dtype == torch.bfloat16 else "fp32",
        gradient_checkpointing=checkpointing,
        device="cpu",
        labelled_logits_only=labelled_only,
        labelled_fraction=labelled / (batch_size * (seq_len - 1)),
    )
    shape = pm.model_shape(config)
    planned = sum(pm.activations(shape, plan).values())
    # Under checkpointing the shared layer inputs are held by the checkpoints, not by saved tensors.
    unseen = pm.shared_layer_inputs(shape, plan) if checkpointing else 0
    assert abs(planned - unseen - measured) <= 64  # the loss scalars


def test_fits_verdicts_per_card():
    assert pm.fits(7 * GIB) == {"8 GB": "yes", "16 GB": "yes", "24 GB": "yes", "40 GB": "yes", "80 GB": "yes"}
    assert pm.fits(7.5 * GIB)["8 GB"] == "tight"
    assert pm.fits(8.5 * GIB)["8 GB"] == "no"
    assert pm.fits(30 * GIB) == {"8 GB": "no", "16 GB": "no", "24 GB": "no", "40 GB": "yes", "80 GB": "yes"}


def test_estimates_order_as_expected(real_shape):
    def peak(batch_size=8, seq_len=2048, **kw):
        return pm.estimate(real_shape, pm.Plan(batch_size=batch_size, seq_len=seq_len, **kw))["peak_bytes"]

    lora = peak(phase="lora", gradient_checkpointing=True)
    assert peak(phase="lora") > lora  # no checkpointing
    assert peak(phase="full", gradient_checkpointing=True) > lora
    # fp32 full: 6.1 GiB weights + 4.4 gradients + 8.8 AdamW states before any activation
    assert 24 * GIB < peak(phase="full", gradient_checkpointing=True, precision="fp32") < 40 * GIB
    # QLoRA saves on weights and, with the unquantised parts left in bf16, nothing is lost on
    # activations: smaller at any size.
    small = {"batch_size": 1, "seq_len": 1024, "phase": "lora", "gradient_checkpointing": True}
    assert peak(**small, bits=4) < peak(**small)
    assert peak(phase="lora", gradient_checkpointing=True, bits=4) < lora - GIB
    result = pm.estimate(real_shape, pm.Plan(phase="projector", batch_size=1, seq_len=1024))
    assert result["fits"]["80 GB"] == "yes"


def test_qlora_weights_and_activations_equal_bitsandbytes_on_cpu(tmp_path):
    """4-bit NF4 weights as bitsandbytes stores them (packed + nested absmax), and bf16 activations:
    tinyvlm train leaves the unquantised parts in the folder's dtype."""
    pytest.importorskip("bitsandbytes")
    from tinyvlm.conversion.build import build_preset
    from tinyvlm.training.train import load_model

    build_preset("tiny", tmp_path / "m", dtype=torch.bfloat16, text=TEXT)
    args = ModelArguments(model_name_or_path=str(tmp_path / "m"), phase="lora", bits=4)
    training_args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, bf16=True, report_to=[])
    model = prepare_model(load_model(args, training_args), args, training_args).train()
    dtypes = {n: p.dtype for n, p in model.named_parameters() if p.dtype not in (torch.uint8, torch.int8)}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}  # tower, norms, lm_head
    llm = model.base_model.model.language_model
    stored = 0
    for name, p in llm.named_parameters():
        if "lora_" not in name:
            stored += p.untyped_storage().nbytes()
            state = getattr(p, "quant_state", None)
            if state is not None:
                stored += state.absmax.nbytes + state.state2.absmax.nbytes
    config = model.base_model.model.config
    shape = pm.model_shape(config)
    plan = pm.Plan(phase="lora", batch_size=1, seq_len=40, bits=4, device="cpu")
    assert pm.weights(shape, plan)["language model"] == pytest.approx(stored, rel=1e-3)  # block rounding
    ids = torch.randint(5, config.text_config.vocab_size - 3, (1, 40))
    ids[:, 1 : 1 + config.image_seq_length] = config.image_token_id
    measured = _saved_bytes(
        model, {"input_ids": ids, "labels": ids, "pixel_values": torch.randn(1, 3, 32, 32)}
    )
    assert abs(sum(pm.activations(shape, plan).values()) - measured) <= 64


def test_qlora_on_an_fp16_folder_keeps_peft_fp32_preparation(tmp_path):
    """fp16 training needs fp32 trainable weights for the grad scaler: PEFT's cast stays there."""
    pytest.importorskip("bitsandbytes")
    from tinyvlm.conversion.build import build_preset
    from tinyvlm.training.train import load_model

    build_preset("tiny", tmp_path / "m", dtype=torch.float16)
    args = ModelArguments(model_name_or_path=str(tmp_path / "m"), phase="lora", bits=4)
    training_args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to=[])
    model = prepare_model(load_model(args, training_args), args, training_args)
    floats = {p.dtype for p in model.parameters() if p.dtype.is_floating_point}
    assert floats == {torch.float32}


def test_4bit_weights_of_the_llm_linears(real_shape):
    plan = pm.Plan(phase="lora", batch_size=1, seq_len=1024, bits=4)
    quantized = sum(n for n, _ in real_shape.quantizable)
    unquantized = real_shape.params["language_model"] - quantized
    expected = quantized * (0.5 + 1 / 64 + 4 / (64 * 256)) + 2 * unquantized  # embeddings etc. in bf16
    assert pm.weights(real_shape, plan)["language model"] == pytest.approx(expected)
    # every decoder linear of TinyLlama: 22 x (q 2048^2 + k, v 2048x256 + o 2048^2 + 3 x 2048x5632)
    assert quantized == 22 * (2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 5632)


@pytest.mark.parametrize(
    "plan, message",
    [
        (pm.Plan(phase="full", batch_size=1, seq_len=1024, bits=4), "needs --phase lora"),
        (pm.Plan(phase="lora", batch_size=1, seq_len=700), "seq_len 700 leaves no text"),
        (pm.Plan(phase="lora", batch_size=0, seq_len=1024), "must be >= 1"),
        (pm.Plan(phase="train", batch_size=1, seq_len=1024), "phase 'train'"),
    ],
)
def test_bad_plans_raise(real_shape, plan, message):
    with pytest.raises(ValueError, match=message):
        pm.estimate(real_shape, plan)


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        pm.load_config(preset="nope")


def test_missing_model_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        pm.load_config(model=str(tmp_path))


def test_cli_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exit_:
        pm.main(["--help"])
    assert exit_.value.code == 0
    assert "example" in capsys.readouterr().out


def test_cli_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    args = ["--preset", "tiny", "--phase", "lora", "--batch_size", "2", "--seq_len", "64", "--json", str(out)]
    assert pm.main(args) == 0
    printed = capsys.readouterr().out
    assert "peak estimate" in printed and "fits: 8 GB yes" in printed
    result = json.loads(out.read_text())
    assert result["plan"]["lora_r"] == 128  # tinyvlm train's default
    assert result["peak_bytes"] == pytest.approx(sum(result["parts"].values()))


def test_cli_labelled_fraction_from_data(tmp_path, capsys):
    """The 99th-percentile row's answer tokens over seq_len - 1, images never opened (none exist)."""
    from tinyvlm.training.data import estimate_token_counts, normalize_row

    def row(i, answer):
        turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": answer}]
        return {"id": i, "image": f"missing-{i}.png", "conversations": turns}

    rows = [row(i, "red " * (1 + i % 5)) for i in range(99)] + [row(99, "a long answer " * 20), {"bad": 1}]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(rows))
    out = tmp_path / "plan.json"
    args = ["--preset", "tiny", "--phase", "lora", "--batch_size", "2", "--seq_len", "200"]
    assert pm.main([*args, "--data", str(data), "--json", str(out)]) == 0
    assert "100 rows" in capsys.readouterr().out
    processor = preset_components("tiny")[1]
    answers = estimate_token_counts([normalize_row(r, i) for i, r in enumerate(rows[:100])], processor, 200)[
        1
    ]
    p99 = sorted(answers)[98]  # the long row is the 100th: the 99th percentile is the next one down
    assert p99 < max(answers)
    assert json.loads(out.read_text())["plan"]["labelled_fraction"] == pytest.approx(p99 / 199)
    with pytest.raises(ValueError, match="not both"):
        pm.main([*args, "--data", str(data), "--labelled_fraction", "0.5"])


def test_cli_takes_train_spelling_of_the_logits_flag(tmp_path):
    peaks = {}
    for value in ("True", "False"):
        out = tmp_path / f"{value}.json"
        args = ["--preset", "tiny", "--phase", "lora", "--batch_size", "2", "--seq_len", "64"]
        assert pm.main([*args, "--labelled_logits_only", value, "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["plan"]["labelled_logits_only"] is (value == "True")
        peaks[value] = result["peak_bytes"]
    assert peaks["True"] < peaks["False"]  # at fraction 1.0 only each row's last position is spared


def test_cli_bad_input_is_one_line_error(capsys):
    from tinyvlm.cli import main as cli

    code = cli(["plan-memory", "--phase", "full", "--bits", "4", "--batch_size", "1", "--seq_len", "1024"])
    assert code == 1
    assert "needs --phase lora" in capsys.readouterr().err
