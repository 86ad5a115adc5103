"""import-llava / export-llava against transformers' own LlavaForConditionalGeneration."""

from __future__ import annotations

import pytest
import torch
from tinyvlm.conversion.from_checkpoints import CheckpointReader
from tinyvlm.conversion.llava import (
    IMPORT_RULES,
    export_llava,
    import_llava,
    rename_keys,
)
from transformers import (
    AutoModelForImageTextToText,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
)

IMAGE_TOKEN = 299


def _read(folder):
    return dict(CheckpointReader(folder))


def _llava(strategy="full", tie=False) -> LlavaForConditionalGeneration:
    vision = SiglipVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
    )
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        tie_word_embeddings=tie,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-2,
        image_seq_length=16,
    )
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    text = torch.randint(3, 290, (2, 12), generator=g)
    input_ids = torch.cat([text[:, :3], torch.full((2, 16), IMAGE_TOKEN), text[:, 3:]], dim=1)
    return {"input_ids": input_ids, "pixel_values": torch.randn(2, 3, 32, 32, generator=g)}


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llava") / "llava"
    model = _llava()
    model.save_pretrained(folder)
    return folder, model


def test_import_llava_gives_llava_logits_and_greedy_tokens(llava_folder, tmp_path):
    folder, llava = llava_folder
    import_llava(folder, tmp_path / "tinyvlm")
    ours = AutoModelForImageTextToText.from_pretrained(tmp_path / "tinyvlm").eval()
    assert type(ours).__name__ == "TinyVLMForConditionalGeneration"
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, llava(**batch).logits, rtol=0, atol=1e-5)
        a = ours.generate(**batch, max_new_tokens=5, do_sample=False, min_new_tokens=5)
        b = llava.generate(**batch, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert torch.equal(a, b)


def test_export_llava_gives_back_the_same_tensors_and_model(llava_folder, tmp_path):
    folder, llava = llava_folder
    import_llava(folder, tmp_path / "tinyvlm")
    export_llava(tmp_path / "tinyvlm", tmp_path / "back")
    original = rename_keys(_read(folder), IMPORT_RULES)
    exported = rename_keys(_read(tmp_path / "back"), IMPORT_RULES)
    assert original.keys() == exported.keys()
    for key in original:
        assert torch.equal(original[key], exported[key]), key
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, llava(**batch).logits, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["memory", "legacy-4x"])
def test_both_llava_key_layouts_import(llava_folder, tmp_path, layout):
    from safetensors.torch import save_file

    folder, llava = llava_folder
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_bytes((folder / "config.json").read_bytes())
    state = {k: v.contiguous() for k, v in llava.state_dict().items()}  # in-memory >= 4.52 layout
    if layout == "legacy-4x":
        state = rename_keys(state, IMPORT_RULES)
        state = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in state.items()}
    else:
        state = {
            k.replace("vision_tower.", "vision_tower.vision_model.", 1) if "vision_model" not in k else k: v
            for k, v in state.items()
        }
    save_file(state, src / "model.safetensors")
    import_llava(src, tmp_path / "out")
    ours = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, llava(**batch).logits, rtol=0, atol=1e-5)


def test_default_strategy_is_refused_and_nothing_written(tmp_path):
    folder = tmp_path / "llava-default"
    _llava(strategy="default").save_pretrained(folder)
    with pytest.raises(ValueError, match="vision_feature_select_strategy='default' drops the first patch"):
        import_llava(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["llava-default"], "no temp folder left behind"


def test_export_refuses_a_projector_llava_cannot_express(tmp_path):
    from tinyvlm.conversion.build import build_preset

    build_preset("tiny", tmp_path / "wide", projector_hidden_size=96)
    with pytest.raises(ValueError, match="projector_hidden_size=96 differs from the LLM width 64"):
        export_llava(tmp_path / "wide", tmp_path / "out")
