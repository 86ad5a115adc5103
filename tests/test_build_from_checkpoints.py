"""`tinyvlm build --vision --llm [--projector]`: tiny SigLIP and Llama checkpoints in every supported key
layout go in; every source tensor must come out bit-identical, loaded through the Auto classes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import solid_image, user_prompt
from safetensors.torch import load_file, save_file
from tinyvlm.conversion import from_checkpoints as fc
from tinyvlm.conversion import port_projector as pp
from tinyvlm.conversion.tokenizer import build_offline_tokenizer
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from tinyvlm import cli

VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
)
SIGLIP_TEXT = dict(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                   max_position_embeddings=16)  # fmt: skip
LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           max_position_embeddings=256, tie_word_embeddings=False)  # fmt: skip
PREPROCESSOR = {"image_processor_type": "SiglipImageProcessor", "image_mean": [0.4, 0.45, 0.5],
                "image_std": [0.2, 0.25, 0.3], "resample": 2, "size": {"height": 32, "width": 32}}  # fmt: skip


def save_weights(folder, state_dict, config_json):
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config_json))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Checkpoint folders: `siglip-5x` (SiglipVisionModel, flat keys, with preprocessor_config.json),
    `siglip-4x` (SiglipVisionModel, `vision_model.` keys), `siglip-full` (SiglipModel with its text
    tower), `llm` (LlamaForCausalLM + offline tokenizer, no pad token)."""
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    tower = SiglipVisionModel(SiglipVisionConfig(**VISION))
    flat = {k.removeprefix("vision_model."): v for k, v in tower.state_dict().items()}  # 5.x layout
    config_json = tower.config.to_dict()
    save_weights(root / "siglip-5x", flat, config_json)
    (root / "siglip-5x" / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    save_weights(root / "siglip-4x", {"vision_model." + k: v for k, v in flat.items()}, config_json)
    SiglipModel(SiglipConfig(vision_config=VISION, text_config=SIGLIP_TEXT)).save_pretrained(
        root / "siglip-full"
    )

    tokenizer = build_offline_tokenizer(vocab_size=300)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **LLM))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    return root


def source_tensors(folder):
    return dict(fc.CheckpointReader(folder))


def expected_vision(folder):
    """tinyvlm key -> source tensor, by the documented rule (not by the code under test)."""
    out = {}
    for key, tensor in source_tensors(folder).items():
        if not key.startswith(("text_model.", "logit_")):
            out["vision_tower." + key.removeprefix("vision_model.")] = tensor
    return out


def assert_bit_identical(actual, expected, name):
    assert actual.dtype == expected.dtype, name
    assert torch.equal(actual, expected), name


def assert_llm_carried(model_sd, llm_folder, num_added):
    for key, tensor in source_tensors(llm_folder).items():
        got = model_sd["language_model." + key]
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            rows = tensor.shape[0]
            assert got.shape[0] == rows + num_added
            assert_bit_identical(got[:rows], tensor, key)
            mean = tensor.double().mean(0).to(tensor.dtype)
            assert torch.equal(got[rows:], mean.expand(num_added, -1)), f"{key}: added rows are not the mean"
        else:
            assert_bit_identical(got, tensor, key)


@pytest.mark.parametrize("vision", ["siglip-5x", "siglip-4x", "siglip-full"])
def test_every_source_tensor_lands_bit_identical(sources, tmp_path, vision):
    out = fc.build_from_checkpoints(str(sources / vision), str(sources / "llm"), str(tmp_path / "out"))
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    model_sd = model.state_dict()

    expected = expected_vision(sources / vision)
    assert {k for k in model_sd if k.startswith("vision_tower.")} == set(expected)
    for key, tensor in expected.items():
        assert_bit_identical(model_sd[key], tensor, key)
    assert_llm_carried(model_sd, sources / "llm", num_added=2)  # <image> and <pad>

    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id == 305
    assert tokenizer.pad_token == "<pad>" and model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.config.text_config.vocab_size == len(tokenizer) == 307
    assert model.config.projector_hidden_size == 64 and model.config.vision_feature_layer == -2
    image_processor = processor.image_processor
    mean = PREPROCESSOR["image_mean"] if vision == "siglip-5x" else [0.5, 0.5, 0.5]
    assert list(image_processor.image_mean) == pytest.approx(mean)
    assert image_processor.size == {"height": 32, "width": 32}

    # the folder runs: one question about one image
    inputs = processor(images=solid_image(), text=user_prompt(processor, "What colour?"), return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], 307) and torch.isfinite(logits).all()


def test_full_siglip_text_tower_is_reported_dropped(sources, tmp_path):
    out = fc.build_from_checkpoints(str(sources / "siglip-full"), str(sources / "llm"), str(tmp_path / "out"))
    report = json.loads((out / "build_report.json").read_text())
    dropped = report["vision"]["dropped"]["SigLIP text tower (the LLM reads the text)"]
    text_keys = [
        k for k in source_tensors(sources / "siglip-full") if k.startswith(("text_model.", "logit_"))
    ]
    assert sorted(dropped) == sorted(text_keys) and "logit_scale" in dropped
    assert report["added_tokens"] == {"<image>": 305, "<pad>": 306}


def test_sharded_and_bin_llm_checkpoints_and_sharded_output(sources, tmp_path):
    sharded, binary = tmp_path / "llm-sharded", tmp_path / "llm-bin"
    llm = LlamaForCausalLM.from_pretrained(sources / "llm")
    llm.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    binary.mkdir()
    torch.save(llm.state_dict(), binary / "pytorch_model.bin")
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        for folder in (sharded, binary):
            shutil.copy(sources / "llm" / name, folder / name)

    for llm_folder in (sharded, binary):
        out = tmp_path / f"out-{llm_folder.name}"
        fc.build_from_checkpoints(
            str(sources / "siglip-4x"), str(llm_folder), str(out), max_shard_size="100KB"
        )
        assert (out / "model.safetensors.index.json").is_file()  # written sharded
        result = source_tensors(out)
        assert_llm_carried(result, llm_folder, num_added=2)
        for key, tensor in expected_vision(sources / "siglip-4x").items():
            assert_bit_identical(result[key], tensor, key)


def test_mixed_dtypes_are_stored_losslessly(sources, tmp_path):
    """SigLIP fp32 + TinyLlama bf16: `auto` widens to fp32 so no SigLIP weight is rounded to bf16."""
    llm_bf16 = tmp_path / "llm-bf16"
    LlamaForCausalLM.from_pretrained(sources / "llm").to(torch.bfloat16).save_pretrained(llm_bf16)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(sources / "llm" / name, llm_bf16 / name)
    out = fc.build_from_checkpoints(str(sources / "siglip-5x"), str(llm_bf16), str(tmp_path / "out"))
    result = source_tensors(out)
    assert {t.dtype for t in result.values()} == {torch.float32}
    for key, tensor in source_tensors(llm_bf16).items():
        rows = tensor.shape[0]
        assert torch.equal(result["language_model." + key][:rows].to(torch.bfloat16), tensor), key
    for key, tensor in expected_vision(sources / "siglip-5x").items():
        assert_bit_identical(result[key], tensor, key)


# --------------------------------------------------------------------------------------------------
# --projector


def write_projector(path, fmt, tensors):
    first, second, _ = pp.PROJECTOR_FORMATS[fmt]
    names = {"linear_1": first, "linear_2": second}
    sd = {f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in tensors.items()}
    torch.save(sd, path) if path.suffix == ".bin" else save_file(sd, str(path))
    return path


def tiny_projector(vision=32, hidden=48, out=64, seed=3):
    g = torch.Generator().manual_seed(seed)
    shapes = {"linear_1.weight": (hidden, vision), "linear_1.bias": (hidden,)}
    shapes.update({"linear_2.weight": (out, hidden), "linear_2.bias": (out,)})
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize("fmt", list(pp.PROJECTOR_FORMATS))
def test_projector_of_every_format_lands_bit_identical(sources, tmp_path, fmt):
    source = tiny_projector()
    suffix = ".bin" if fmt in ("llava", "llava-lora", "tinyllava") else ".safetensors"
    path = write_projector(tmp_path / f"projector{suffix}", fmt, source)
    out = fc.build_from_checkpoints(
        str(sources / "siglip-5x"), str(sources / "llm"), str(tmp_path / "out"), str(path)
    )
    result = load_file(str(out / "model.safetensors"))
    for name, tensor in source.items():
        assert_bit_identical(result["multi_modal_projector." + name], tensor, name)
    config = json.loads((out / "config.json").read_text())
    assert config["projector_hidden_size"] == 48
    assert json.loads((out / "build_report.json").read_text())["projector"]["format"] == fmt


def test_port_projector_then_build_keeps_linear_1(sources, tmp_path):
    old = tiny_projector(out=96)  # an "old LLM" 96 wide; tinyvlm's LLM is 64 wide
    old_file = write_projector(tmp_path / "mm_projector.bin", "llava", old)
    ported = tmp_path / "ported.safetensors"
    pp.main(
        [
            "--input",
            str(old_file),
            "--output",
            str(ported),
            "--vision-hidden-size",
            "32",
            "--target-hidden-size",
            "64",
        ]
    )
    cli_rc = cli.main(["build", "--vision", str(sources / "siglip-5x"), "--llm", str(sources / "llm"),
                       "--projector", str(ported), "--output", str(tmp_path / "out")])  # fmt: skip
    assert cli_rc == 0
    result = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert torch.equal(result["multi_modal_projector.linear_1.weight"], old["linear_1.weight"])
    assert torch.equal(result["multi_modal_projector.linear_1.bias"], old["linear_1.bias"])
    assert torch.equal(
        result["multi_modal_projector.linear_2.weight"],
        load_file(str(ported))["multi_modal_projector.linear_2.weight"],
    )


def assert_no_output(tmp_path, name="out"):
    assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{name}")], "temp folder left behind"


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ({"vision": 24}, r"linear_1 takes 24-wide features but the vision tower is 32 wide"),
        ({"out": 96}, r"linear_2 outputs 96 dims but the LLM is 64 wide \(port it first"),
    ],
)
def test_projector_that_does_not_fit_is_refused(sources, tmp_path, shape, message):
    path = write_projector(tmp_path / "p.safetensors", "llava-hf", tiny_projector(**shape))
    with pytest.raises(ValueError, match=message) as err:
        fc.build_from_checkpoints(
            str(sources / "siglip-5x"), str(sources / "llm"), str(tmp_path / "out"), str(path)
        )
    assert str(path) in str(err.value)
    assert_no_output(tmp_path)


# --------------------------------------------------------------------------------------------------
# nothing silently dropped, nothing half-written


def test_missing_llm_key_is_listed(sources, tmp_path):
    llm = tmp_path / "llm"
    shutil.copytree(sources / "llm", llm)
    sd = load_file(str(llm / "model.safetensors"))
    del sd["model.norm.weight"]
    save_file(sd, str(llm / "model.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"1 model key\(s\) missing from the checkpoints: language_model\.model\.norm\.weight",
    ):
        fc.build_from_checkpoints(str(sources / "siglip-5x"), str(llm), str(tmp_path / "out"))
    assert_no_output(tmp_path)


def test_unknown_vision_key_is_listed_with_its_file(sources, tmp_path):
    vision = tmp_path / "siglip"
    shutil.copytree(sources / "siglip-4x", vision)
    sd = load_file(str(vision / "model.safetensors"))
    sd["vision_model.classifier.weight"] = torch.zeros(3, 32)
    save_file(sd, str(vision / "model.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"unknown checkpoint key\(s\): .*model\.safetensors: vision_model\.classifier\.weight",
    ):
        fc.build_from_checkpoints(str(vision), str(sources / "llm"), str(tmp_path / "out"))
    assert_no_output(tmp_path)


def test_truncated_llm_checkpoint_fails_naming_the_file(sources, tmp_path):
    llm = tmp_path / "llm"
    shutil.copytree(sources / "llm", llm)
    weights = llm / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated, corrupt") as err:
        fc.build_from_checkpoints(str(sources / "siglip-5x"), str(llm), str(tmp_path / "out"))
    assert str(weights) in str(err.value)
    assert_no_output(tmp_path)


def test_image_size_mismatch_is_refused(sources, tmp_path):
    vision = tmp_path / "siglip"
    shutil.copytree(sources / "siglip-5x", vision)
    (vision / "preprocessor_config.json").write_text(
        json.dumps({**PREPROCESSOR, "size": {"height": 64, "width": 64}})
    )
    with pytest.raises(ValueError, match="resizes to .*64.* but the vision tower takes 32x32"):
        fc.build_from_checkpoints(str(vision), str(sources / "llm"), str(tmp_path / "out"))


def test_existing_output_is_kept_without_overwrite(sources, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        fc.build_from_checkpoints(str(sources / "siglip-5x"), str(sources / "llm"), str(tmp_path / "out"))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_wrong_model_types_are_named(sources, tmp_path):
    with pytest.raises(ValueError, match="model_type 'llama', expected 'siglip' or 'siglip_vision_model'"):
        fc.build_from_checkpoints(str(sources / "llm"), str(sources / "llm"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="model_type 'siglip_vision_model', expected 'llama'"):
        fc.build_from_checkpoints(
            str(sources / "siglip-5x"), str(sources / "siglip-5x"), str(tmp_path / "out")
        )


# --------------------------------------------------------------------------------------------------
# Hub ids


def test_hub_ids_resolve_from_the_cache_offline(sources, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    for repo, folder in (("local/tiny-siglip", "siglip-full"), ("local/tiny-llama", "llm")):
        storage = cache / f"models--{repo.replace('/', '--')}"
        commit = "0123456789abcdef0123456789abcdef01234567"
        shutil.copytree(sources / folder, storage / "snapshots" / commit)
        (storage / "refs").mkdir()
        (storage / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    out = fc.build_from_checkpoints("local/tiny-siglip", "local/tiny-llama", str(tmp_path / "out"))
    result = source_tensors(out)
    for key, tensor in expected_vision(sources / "siglip-full").items():
        assert_bit_identical(result[key], tensor, key)
    with pytest.raises(
        FileNotFoundError, match="--llm local/not-cached: not a local folder, and the Hub download failed"
    ):
        fc.build_from_checkpoints("local/tiny-siglip", "local/not-cached", str(tmp_path / "out2"))


def test_key_tables_place_both_siglip_layouts_the_same_way():
    placed_4x, _ = fc.plan_vision_keys(["vision_model.encoder.layers.0.mlp.fc1.weight"])
    placed_5x, _ = fc.plan_vision_keys(["encoder.layers.0.mlp.fc1.weight"])
    assert placed_4x.keys() == placed_5x.keys() == {"vision_tower.encoder.layers.0.mlp.fc1.weight"}
    with pytest.raises(ValueError, match="both map to"):
        fc.plan_vision_keys(["vision_model.post_layernorm.weight", "post_layernorm.weight"])
