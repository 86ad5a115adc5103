"""TinyVLMForConditionalGeneration: forward, checks, generation, attention backends, checkpointing."""

from __future__ import annotations

import pytest
import torch
from conftest import solid_image, user_prompt
from tinyvlm.conversion.build import build_preset_model
from tinyvlm.training.train import enable_activation_checkpointing
from transformers import AutoModelForImageTextToText, AutoProcessor, SiglipVisionModel

pytestmark = pytest.mark.compat

COLOURS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (240, 240, 0)]


def _inputs(processor, questions, images, **kwargs):
    texts = [user_prompt(processor, q, n) for q, n in questions]
    return processor(images=images, text=texts, return_tensors="pt", padding=True, **kwargs)


def test_image_seq_length_keeps_every_patch(tiny):
    model, processor = tiny
    config = model.config
    assert (
        config.image_seq_length == (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    )
    assert processor.image_seq_length == config.image_seq_length
    features = model.get_image_features(
        processor.image_processor(solid_image(), return_tensors="pt").pixel_values
    )
    assert features.shape == (1, config.image_seq_length, config.text_config.hidden_size)


def test_image_features_equal_siglip_hidden_state(tiny):
    """We run only the layers up to vision_feature_layer; the result must be SigLIP's own hidden state."""
    model, processor = tiny
    reference = SiglipVisionModel(model.config.vision_config).eval()
    state = {k: v for k, v in model.vision_tower.state_dict().items()}
    target = reference.vision_model if hasattr(reference, "vision_model") else reference
    target.load_state_dict(state)
    pixel_values = processor.image_processor(
        [solid_image(c) for c in COLOURS], return_tensors="pt"
    ).pixel_values
    with torch.no_grad():
        hidden = reference(pixel_values, output_hidden_states=True).hidden_states[
            model.config.vision_feature_layer
        ]
        expected = model.multi_modal_projector(hidden)
        ours = model.get_image_features(pixel_values)
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_loss_from_labels(tiny):
    model, processor = tiny
    batch = _inputs(processor, [("What colour?", 1)], [solid_image()])
    labels = batch["input_ids"].clone()
    labels[labels == model.config.image_token_id] = -100
    out = model(**batch, labels=labels)
    assert out.loss is not None and torch.isfinite(out.loss)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_image_token_count_mismatch_raises(tiny):
    model, processor = tiny
    batch = _inputs(processor, [("What colour?", 1)], [solid_image()])
    two_images = torch.cat([batch["pixel_values"]] * 2)
    seq = model.config.image_seq_length
    with pytest.raises(ValueError, match=rf"{seq} image tokens but 2 image\(s\) x {seq} tokens = {2 * seq}"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=two_images)


def test_image_tokens_without_pixel_values_raise(tiny):
    model, processor = tiny
    batch = _inputs(processor, [("What colour?", 1)], [solid_image()])
    with pytest.raises(ValueError, match=f"{model.config.image_seq_length} image tokens but no pixel_values"):
        model(input_ids=batch["input_ids"])


def test_wrong_pixel_size_raises(tiny):
    model, processor = tiny
    batch = _inputs(processor, [("What colour?", 1)], [solid_image()])
    size = model.config.vision_config.image_size
    bad = torch.zeros(1, 3, size + 4, size + 4)
    with pytest.raises(
        ValueError, match=rf"shape \(1, 3, {size + 4}, {size + 4}\), expected \(num_images, 3, {size}"
    ):
        model(input_ids=batch["input_ids"], pixel_values=bad)


def _generate(model, batch, **kwargs):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, do_sample=False, **kwargs)
    return out[:, batch["input_ids"].shape[1] :]


def test_vision_tower_runs_once_per_generate_and_cache_is_used(tiny):
    model, processor = tiny
    batch = _inputs(processor, [("What colour is it?", 1)], [solid_image()])
    vision_calls, lm_lengths = [], []
    h1 = model.vision_tower.embeddings.register_forward_hook(lambda *a: vision_calls.append(1))
    h2 = model.language_model.register_forward_hook(
        lambda m, args, kwargs, out: lm_lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    try:
        new = _generate(model, batch, min_new_tokens=6)
    finally:
        h1.remove()
        h2.remove()
    assert new.shape[1] == 6
    assert len(vision_calls) == 1
    assert lm_lengths[0] == batch["input_ids"].shape[1] and set(lm_lengths[1:]) == {1}


def test_cached_equals_uncached(tiny):
    model, processor = tiny
    batch = _inputs(processor, [("What colour is it?", 1)], [solid_image()])
    assert torch.equal(_generate(model, batch), _generate(model, batch, use_cache=False))


def test_left_padded_batch_equals_one_at_a_time(tiny):
    model, processor = tiny
    questions = [("What colour is the shape?", 1), ("Colour?", 1), ("How many shapes are there in it?", 1)]
    images = [solid_image(c) for c in COLOURS[:3]]
    batch = _inputs(processor, questions, images)
    assert (batch["attention_mask"][:, 0] == 0).any(), "prompts of different lengths must be left-padded"
    batched = _generate(model, batch)
    for i, (question, image) in enumerate(zip(questions, images)):
        single = _generate(model, _inputs(processor, [question], [image]))
        assert torch.equal(batched[i], single[0]), f"prompt {i}"


def test_several_images_in_one_prompt(tiny):
    model, processor = tiny
    images = [solid_image(COLOURS[0]), solid_image(COLOURS[2])]
    batch = _inputs(processor, [("Which is red?", 2)], images)
    assert batch["pixel_values"].shape[0] == 2
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 2 * model.config.image_seq_length
    out = model(**batch)
    swapped = model(**{**batch, "pixel_values": batch["pixel_values"].flip(0)})
    assert not torch.allclose(out.logits[:, -1], swapped.logits[:, -1]), "image order must matter"
    assert _generate(model, batch).shape == (1, 6)


def test_text_only_prompt(tiny):
    model, processor = tiny
    text = processor.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False
    )
    batch = processor(text=[text], return_tensors="pt")
    assert "pixel_values" not in batch
    assert _generate(model, batch).shape == (1, 6)


def test_eager_equals_sdpa_and_reaches_both_submodels(tiny_folder):
    logits = {}
    for impl in ("eager", "sdpa"):
        model = AutoModelForImageTextToText.from_pretrained(tiny_folder, attn_implementation=impl).eval()
        assert model.config.vision_config._attn_implementation == impl
        assert model.config.text_config._attn_implementation == impl
        assert model.vision_tower.encoder.layers[0].self_attn.config._attn_implementation == impl
        assert model.language_model.config._attn_implementation == impl
        processor = AutoProcessor.from_pretrained(tiny_folder)
        images = [solid_image(), solid_image(COLOURS[1])]
        batch = _inputs(processor, [("What colour?", 1), ("Colour of it, please?", 1)], images)
        with torch.no_grad():
            logits[impl] = model(**batch).logits
    real = batch["attention_mask"].bool()  # padded positions hold no meaningful logits
    torch.testing.assert_close(logits["eager"][real], logits["sdpa"][real], rtol=1e-5, atol=1e-5)


def test_flash_attention_without_flash_attn_is_a_clear_error(tiny_folder):
    with pytest.raises((ImportError, ValueError, RuntimeError), match=r"(?i)flash"):
        AutoModelForImageTextToText.from_pretrained(tiny_folder, attn_implementation="flash_attention_2")


def test_gradient_checkpointing_matches_plain_backward(tiny):
    _, processor = tiny
    batch = _inputs(processor, [("What colour?", 1)], [solid_image()])
    grads = []
    for checkpointing in (False, True):
        model, _ = build_preset_model("tiny", seed=0)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.language_model.model.gradient_checkpointing
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        grads.append(model.multi_modal_projector.linear_1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_gradient_checkpointing_enable_takes_every_stock_argument():
    """The Trainer passes the installed transformers' own arguments (5.x before 5.23 added
    `every_n_layers` and `offload`): the model's version of the method must take them all."""
    import inspect

    from transformers import PreTrainedModel

    stock = inspect.signature(PreTrainedModel.gradient_checkpointing_enable).parameters
    defaults = {
        name: p.default
        for name, p in stock.items()
        if name != "self" and p.default is not inspect.Parameter.empty
    }
    model, _ = build_preset_model("tiny", seed=0)
    model.gradient_checkpointing_enable(**defaults)
    assert model.language_model.model.gradient_checkpointing


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("vision_trains", [False, True])
def test_checkpointing_back_propagates_the_vision_tower_only_when_it_trains(tiny, reentrant, vision_trains):
    """Frozen LLM (as under adapters): the token-embedding hook lets gradients reach the projector and
    any trainable vision layer; a frozen tower runs without autograd (5.x's stock hook would make
    SigLIP's patch embeddings require grad and so checkpoint and back-propagate the whole tower)."""
    _, processor = tiny
    batch = _inputs(processor, [("What colour?", 1)], [solid_image()])
    grads, vision_out_grad = [], []
    for checkpointing in (False, True):
        model, _ = build_preset_model("tiny", seed=0)
        model.train()
        model.language_model.requires_grad_(False)
        model.vision_tower.requires_grad_(False)
        if vision_trains:  # a layer past the embeddings: reentrant checkpointing needs the hook there
            model.vision_tower.encoder.layers[0].requires_grad_(True)
        if checkpointing:
            enable_activation_checkpointing(model, use_reentrant=reentrant)
        layer = model.vision_tower.encoder.layers[0]
        hook = layer.register_forward_hook(lambda m, args, out: vision_out_grad.append(out.requires_grad))
        model(**batch, labels=batch["input_ids"]).loss.backward()
        hook.remove()
        trained = [model.multi_modal_projector.linear_1.weight]
        if vision_trains:
            trained.append(layer.mlp.fc1.weight)
        assert all(p.grad is not None for p in trained)
        grads.append([p.grad.clone() for p in trained])
    # (reentrant checkpointing runs the first forward under no_grad: only the recomputation has grad)
    assert any(vision_out_grad) == vision_trains
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_save_and_load_round_trip(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    batch = _inputs(processor, [("What colour?", 1)], [solid_image()])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    keys = set(loaded.state_dict())
    assert "vision_tower.embeddings.patch_embedding.weight" in keys
    assert "language_model.lm_head.weight" in keys and "multi_modal_projector.linear_2.bias" in keys


def test_generated_image_token_after_prefill_is_not_an_error(tiny):
    """A random model may sample `<image>`; the decode step must not mistake it for a placeholder."""
    model, processor = tiny
    batch = _inputs(processor, [("What colour?", 1)], [solid_image()])
    with torch.no_grad():
        prefill = model(**batch, use_cache=True)
        step = torch.tensor([[model.config.image_token_id]])
        mask = torch.cat([batch["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1)
        cache = prefill["cache"] if "cache" in prefill else prefill["past_key_values"]  # 5.24 renamed it
        out = model(input_ids=step, attention_mask=mask, past_key_values=cache)
    assert out.logits.shape[1] == 1


def test_generation_config_never_generates_image_or_pad(tiny):
    model, processor = tiny
    assert model.config.image_token_id in model.generation_config.suppress_tokens
    assert processor.tokenizer.pad_token_id in model.generation_config.suppress_tokens


def test_static_cache_generation_equals_dynamic(tiny):
    model, processor = tiny
    batch = _inputs(
        processor, [("What colour is it?", 1), ("Colour?", 1)], [solid_image(), solid_image(COLOURS[2])]
    )
    assert torch.equal(_generate(model, batch), _generate(model, batch, cache_implementation="static"))


def test_static_cache_compiled_decode_equals_eager_without_graph_breaks():
    """generate() compiles only the decode step (fullgraph): the prefill, and so the vision tower, runs
    uncompiled once per call, and a second call reuses the graph. CPU needs _compile_all_devices; on
    CUDA transformers compiles a static-cache decode by itself."""
    import torch._dynamo
    from transformers import CompileConfig

    model, processor = build_preset_model("tiny", seed=0)
    batch = _inputs(
        processor, [("What colour is it?", 1), ("Colour?", 1)], [solid_image(), solid_image(COLOURS[2])]
    )
    expected = _generate(model, batch)
    compile_config = CompileConfig(fullgraph=True, dynamic=False)
    compile_config._compile_all_devices = True
    vision_calls = []
    model.vision_tower.embeddings.register_forward_hook(lambda *a: vision_calls.append(1))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for _ in range(2):
        out = _generate(model, batch, cache_implementation="static", compile_config=compile_config)
        assert torch.equal(out, expected)
    assert len(vision_calls) == 2
    assert hasattr(model, "_compiled_call")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
