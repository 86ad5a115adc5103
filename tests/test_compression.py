"""Image-token compression: k x k patch merge before the projector (729 -> 196 / 81 tokens)."""

from __future__ import annotations

import pytest
import torch
from conftest import solid_image, user_prompt
from tinyvlm.conversion.build import PRESETS, build_preset, build_preset_model
from tinyvlm.conversion.llava import export_llava
from tinyvlm.modeling_tinyvlm import TinyVLMConfig
from tinyvlm.modeling_tinyvlm.modeling_tinyvlm import downsample_patches
from transformers import AutoModelForImageTextToText, AutoProcessor


@pytest.mark.parametrize("factor,tokens", [(1, 729), (2, 196), (3, 81)])
def test_so400m_token_counts(factor, tokens):
    config = TinyVLMConfig(
        vision_config={"model_type": "siglip_vision_model", **PRESETS["tinyllama-siglip"]["vision"]},
        text_config={"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4},
        projector_downsample_factor=factor,
    )
    assert config.image_seq_length == tokens


def test_pixel_shuffle_concatenates_each_block_and_zero_pads_the_edge():
    grid, c = 5, 3
    features = torch.randn(2, grid * grid, c)
    out = downsample_patches(features, grid, 2, "pixel_shuffle")
    assert out.shape == (2, 9, 4 * c)
    patches = features.reshape(2, grid, grid, c)
    # block (0, 1) covers rows 0-1, cols 2-3, in row-major order within the block
    expected = torch.cat([patches[:, 0, 2], patches[:, 0, 3], patches[:, 1, 2], patches[:, 1, 3]], dim=-1)
    torch.testing.assert_close(out[:, 1], expected)
    # block (2, 2) holds only the corner patch (4, 4); the rest is padding
    corner = out[:, 8].reshape(2, 4, c)
    torch.testing.assert_close(corner[:, 0], patches[:, 4, 4])
    assert (corner[:, 1:] == 0).all()


def test_avg_pool_averages_only_real_patches():
    grid, c = 5, 3
    features = torch.randn(1, grid * grid, c)
    out = downsample_patches(features, grid, 2, "avg_pool")
    patches = features.reshape(1, grid, grid, c)
    assert out.shape == (1, 9, c)
    torch.testing.assert_close(out[:, 0], patches[:, :2, :2].mean(dim=(1, 2)))
    torch.testing.assert_close(out[:, 8], patches[:, 4, 4])
    torch.testing.assert_close(out[:, 2], patches[:, :2, 4].mean(dim=1))


@pytest.mark.parametrize("mode", ["pixel_shuffle", "avg_pool"])
def test_compressed_model_generates_and_round_trips(tmp_path, mode):
    vision = {"image_size": 40}  # grid 5: exercises the padded edge
    build_preset(
        "tiny", tmp_path / "m", vision=vision, projector_downsample_factor=2, projector_downsample_mode=mode
    )
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "m")
    assert model.config.image_seq_length == 9 == processor.image_seq_length
    batch = processor(images=[solid_image()], text=[user_prompt(processor, "Colour?")], return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 9
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3
    expected_in = 32 * 4 if mode == "pixel_shuffle" else 32
    assert model.multi_modal_projector.linear_1.in_features == expected_in


def test_export_llava_refuses_compression(tmp_path):
    build_preset("tiny", tmp_path / "m", projector_downsample_factor=2)
    with pytest.raises(ValueError, match="projector_downsample_factor=2 .* cannot be exported to Llava"):
        export_llava(tmp_path / "m", tmp_path / "llava")
    assert not (tmp_path / "llava").exists()


def test_uncompressed_default_is_unchanged():
    model, _ = build_preset_model("tiny")
    assert model.config.projector_downsample_factor == 1
    assert model.multi_modal_projector.linear_1.in_features == model.config.vision_config.hidden_size
