"""`tinyvlm port-projector`: every old projector format in, a tinyvlm projector file out.

The format tests use the real shapes of a SigLIP-so400m + Llama-3-8B projector ([4096, 1152], [4096],
[4096, 4096], [4096]); the embedding-map tests use small synthetic LLMs whose embedding tables are a
known linear map of each other.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tinyvlm.conversion import port_projector as pp
from tokenizers import Tokenizer, models

from tinyvlm import cli

VISION, HIDDEN = 1152, 4096  # SigLIP-so400m width, Llama-3-8B width


def projector_tensors(vision=VISION, hidden=HIDDEN, out=HIDDEN, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"linear_1.weight": (hidden, vision), "linear_1.bias": (hidden,)}
    shapes.update({"linear_2.weight": (out, hidden), "linear_2.bias": (out,)})
    return {name: (torch.randn(shape, generator=g) * 0.02).to(dtype) for name, shape in shapes.items()}


def as_format(tensors, fmt):
    """Canonical projector tensors -> that format's key names."""
    first, second, _ = pp.PROJECTOR_FORMATS[fmt]
    prefix = {"linear_1": first, "linear_2": second}
    return {f"{prefix[name.split('.')[0]]}.{name.split('.')[1]}": t for name, t in tensors.items()}


def write_format(root, fmt, tensors):
    """Write `tensors` the way that format's tool does; returns the --input to pass (folder or file)."""
    sd = as_format(tensors, fmt)
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "llava":  # LLaVA / Bunny pretrain output folder
        torch.save(sd, root / "mm_projector.bin")
        (root / "config.json").write_text("{}")
        return root
    if fmt == "llava-lora":
        torch.save(sd, root / "non_lora_trainables.bin")
        return root
    if fmt == "xtuner":
        (root / "projector").mkdir()
        save_file(sd, str(root / "projector" / "model.safetensors"))
        return root
    if fmt == "llava-hf":  # a full model file: the other tensors must be ignored, not mistaken
        sd["language_model.model.embed_tokens.weight"] = torch.zeros(4, 8)
        save_file(sd, str(root / "model.safetensors"))
        return root / "model.safetensors"
    if fmt == "llava-hf-new":  # sharded full checkpoint, projector split across shards
        keys = sorted(sd)
        shards = {"model-00001-of-00002.safetensors": keys[:2], "model-00002-of-00002.safetensors": keys[2:]}
        shards["model-00002-of-00002.safetensors"].append("model.language_model.norm.weight")
        sd["model.language_model.norm.weight"] = torch.ones(8)
        weight_map = {}
        for shard, shard_keys in shards.items():
            save_file({k: sd[k] for k in shard_keys}, str(root / shard))
            weight_map.update(dict.fromkeys(shard_keys, shard))
        (root / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )
        return root
    if fmt == "tinyllava":
        (root / "connector").mkdir()
        torch.save(sd, root / "connector" / "pytorch_model.bin")
        return root
    raise AssertionError(fmt)


@pytest.fixture(scope="module")
def real_projector():
    return projector_tensors()


def run(*args):
    return pp.main([str(a) for a in args])


# --------------------------------------------------------------------------------------------------
# formats


@pytest.mark.parametrize("fmt", list(pp.PROJECTOR_FORMATS))
def test_detect_format_finds_each_format(fmt):
    assert pp.detect_format(as_format(projector_tensors(8, 16, 16), fmt)) == fmt


@pytest.mark.parametrize("fmt", list(pp.PROJECTOR_FORMATS))
def test_keep_input_real_shapes_every_format(tmp_path, real_projector, fmt, capsys):
    source = write_format(tmp_path / "in", fmt, real_projector)
    out, report_path = tmp_path / "projector.safetensors", tmp_path / "report.json"
    assert run("--input", source, "--output", out, "--report", report_path) == 0

    ported = load_file(str(out))
    assert sorted(ported) == sorted(pp.OUTPUT_PREFIX + name for name in pp.CANONICAL)
    for name in ("linear_1.weight", "linear_1.bias"):  # bit-identical, same dtype
        assert ported[pp.OUTPUT_PREFIX + name].dtype == torch.float16
        assert torch.equal(ported[pp.OUTPUT_PREFIX + name], real_projector[name])
    assert ported["multi_modal_projector.linear_2.weight"].shape == (2048, HIDDEN)
    assert ported["multi_modal_projector.linear_2.bias"].shape == (2048,)

    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["source_format"] == fmt and meta["strategy"] == "keep-input"
    assert meta["projector_hidden_size"] == str(HIDDEN) and meta["format"] == "pt"
    report = json.loads(report_path.read_text())
    assert report == json.loads(meta["tinyvlm_port_report"])
    actions = {k.removeprefix(pp.OUTPUT_PREFIX): v["action"] for k, v in report["tensors"].items()}
    assert actions == {
        "linear_1.weight": "kept",
        "linear_1.bias": "kept",
        "linear_2.weight": "reinitialised",
        "linear_2.bias": "reinitialised",
    }
    printed = capsys.readouterr().out
    assert fmt in printed and "[4096, 1152]" in printed and "float16" in printed


def test_fresh_linear_2_is_torch_linear_init_and_seeded(tmp_path, real_projector):
    source = write_format(tmp_path / "in", "llava", real_projector)
    outs = [tmp_path / f"{name}.safetensors" for name in ("a", "b", "c")]
    for out, seed in zip(outs, (0, 0, 1)):
        run("--input", source, "--output", out, "--seed", seed)
    a, b, c = (load_file(str(o))["multi_modal_projector.linear_2.weight"].float() for o in outs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    bound = 1 / math.sqrt(HIDDEN)
    assert a.abs().max() <= bound and a.std() == pytest.approx(bound / math.sqrt(3), rel=0.01)


def test_reinit_keeps_only_the_shapes(tmp_path, real_projector):
    source = write_format(tmp_path / "in", "xtuner", real_projector)
    out = tmp_path / "p.safetensors"
    run("--input", source, "--output", out, "--strategy", "reinit")
    ported = load_file(str(out))
    w1 = ported["multi_modal_projector.linear_1.weight"]
    assert w1.shape == (HIDDEN, VISION) and not torch.equal(w1, real_projector["linear_1.weight"])
    with safe_open(str(out), "pt") as f:
        report = json.loads(f.metadata()["tinyvlm_port_report"])
    assert {v["action"] for v in report["tensors"].values()} == {"reinitialised"}


def test_help_documents_every_strategy_with_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pp.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in pp.STRATEGIES:
        assert f"  {name}: " in text
    assert "example:" in text and "tinyvlm port-projector --input" in text


# --------------------------------------------------------------------------------------------------
# refusals: each names the file, key, shape or widths, and leaves nothing behind


def assert_nothing_written(folder, out):
    assert not out.exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(f".{out.name}")]


def test_clip_width_projector_refused_naming_both_widths(tmp_path, capsys):
    source = write_format(tmp_path / "in", "llava", projector_tensors(vision=1024, hidden=64, out=64))
    out = tmp_path / "p.safetensors"
    with pytest.raises(ValueError, match=r"1024-wide .* 1152 wide") as err:
        run("--input", source, "--output", out)
    assert "mm_projector.bin" in str(err.value) and "model.mm_projector.0.weight" in str(err.value)
    assert_nothing_written(tmp_path, out)
    # through the real command line: non-zero exit, one line naming both widths
    assert cli.main(["port-projector", "--input", str(source), "--output", str(out)]) == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "1024" in line and "1152" in line


@pytest.mark.parametrize("name", ["mm_projector.bin", "projector.safetensors"])
def test_truncated_checkpoint_fails_naming_the_file(tmp_path, name):
    sd = as_format(projector_tensors(8, 16, 16), "llava")
    path = tmp_path / name
    torch.save(sd, path) if name.endswith(".bin") else save_file(sd, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    out = tmp_path / "p.safetensors"
    with pytest.raises(ValueError, match="truncated, corrupt") as err:
        run("--input", path, "--output", out, "--vision-hidden-size", 8, "--target-hidden-size", 4)
    assert str(path) in str(err.value)
    assert_nothing_written(tmp_path, out)


def test_missing_key_fails_naming_file_and_key(tmp_path):
    sd = as_format(projector_tensors(8, 16, 16), "llava")
    del sd["model.mm_projector.2.bias"]
    torch.save(sd, tmp_path / "mm_projector.bin")
    out = tmp_path / "p.safetensors"
    with pytest.raises(
        ValueError,
        match=r"mm_projector\.bin: llava projector is missing key\(s\) model\.mm_projector\.2\.bias",
    ):
        run("--input", tmp_path, "--output", out, "--vision-hidden-size", 8)
    assert_nothing_written(tmp_path, out)


def test_wrong_shape_fails_naming_key_and_shape(tmp_path):
    tensors = projector_tensors(8, 16, 16)
    tensors["linear_2.weight"] = tensors["linear_2.weight"][:, :12].contiguous()
    save_file(as_format(tensors, "xtuner"), str(tmp_path / "x.safetensors"))
    with pytest.raises(
        ValueError, match=r"x\.safetensors: model\.2\.weight has shape \[16, 12\], expected \[16, 16\]"
    ):
        run(
            "--input",
            tmp_path / "x.safetensors",
            "--output",
            tmp_path / "p.safetensors",
            "--vision-hidden-size",
            8,
        )


def test_three_layer_projector_refused(tmp_path):
    sd = as_format(projector_tensors(8, 16, 16), "llava")
    sd["model.mm_projector.4.weight"] = torch.zeros(16, 16)
    with pytest.raises(
        ValueError, match=r"unexpected llava projector key\(s\) model\.mm_projector\.4\.weight"
    ):
        pp.port_projector(sd, vision_hidden_size=8)


def test_no_projector_keys_lists_what_was_found():
    with pytest.raises(ValueError, match=r"no projector keys found \(keys start: lm_head\.weight"):
        pp.detect_format({"lm_head.weight": torch.zeros(1)})


def test_existing_output_needs_overwrite(tmp_path, real_projector):
    source = write_format(tmp_path / "in", "tinyllava", real_projector)
    out = tmp_path / "p.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        run("--input", source, "--output", out)
    assert out.read_bytes() == b"keep me"
    run("--input", source, "--output", out, "--overwrite")
    assert "multi_modal_projector.linear_1.weight" in load_file(str(out))


# --------------------------------------------------------------------------------------------------
# embedding-map


def tokenizer_json(folder, vocab):
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.add_special_tokens(["<unk>"])  # in both vocabularies, but a special token: never matched
    tokenizer.save(str(folder / "tokenizer.json"))


def synthetic_llm_pair(tmp_path, noise, old_hidden=24, new_hidden=8, num_words=400, seed=0):
    """Old LLM (byte-level vocab, 'Ġword'), new LLM (SentencePiece vocab, '▁word') whose embeddings are
    new = A old + c (+ noise) over the shared words; each side also has tokens the other lacks."""
    g = torch.Generator().manual_seed(seed)
    words = [f"w{i}" for i in range(num_words)]
    old_vocab = {"<unk>": 0, **{f"Ġ{w}": i + 1 for i, w in enumerate(words)}, "Ġonlyold": num_words + 1}
    new_words = list(reversed(words))  # different ids for the same token
    new_vocab = {"<unk>": 0, "▁onlynew": 1, **{f"▁{w}": i + 2 for i, w in enumerate(new_words)}}
    old_table = torch.randn(len(old_vocab), old_hidden, generator=g)
    a, c = (
        torch.randn(new_hidden, old_hidden, generator=g) / math.sqrt(old_hidden),
        torch.randn(new_hidden, generator=g),
    )
    new_table = torch.randn(len(new_vocab), new_hidden, generator=g)
    for word in words:
        row = a @ old_table[old_vocab[f"Ġ{word}"]] + c
        new_table[new_vocab[f"▁{word}"]] = row + noise * torch.randn(new_hidden, generator=g)
    old_dir, new_dir = tmp_path / "old-llm", tmp_path / "new-llm"
    tokenizer_json(old_dir, old_vocab)
    tokenizer_json(new_dir, new_vocab)
    save_file(
        {"model.embed_tokens.weight": old_table, "lm_head.weight": old_table.clone()},
        str(old_dir / "model.safetensors"),
    )
    save_file({"model.embed_tokens.weight": new_table}, str(new_dir / "model.safetensors"))
    return old_dir, new_dir / "model.safetensors", a.double(), c.double()  # folder, and a bare file


def projector_outputs(tensors, x):
    w1, b1 = tensors["linear_1.weight"].double(), tensors["linear_1.bias"].double()
    w2, b2 = tensors["linear_2.weight"].double(), tensors["linear_2.bias"].double()
    return torch.nn.functional.gelu(x @ w1.T + b1) @ w2.T + b2


def port_with_map(tmp_path, noise, strategy="embedding-map"):
    old_llm, new_llm, a, c = synthetic_llm_pair(tmp_path, noise)
    old = projector_tensors(vision=12, hidden=32, out=24, dtype=torch.float32, seed=1)
    old["linear_2.weight"] *= 10  # outputs on the scale of the embeddings
    source = write_format(tmp_path / "in", "llava", old)
    out = tmp_path / f"{strategy}.safetensors"
    extra = ["--old-llm", old_llm, "--new-llm", new_llm] if strategy == "embedding-map" else []
    run(
        "--input",
        source,
        "--output",
        out,
        "--strategy",
        strategy,
        "--vision-hidden-size",
        12,
        "--target-hidden-size",
        8,
        *extra,
    )
    new = {k.removeprefix(pp.OUTPUT_PREFIX): v for k, v in load_file(str(out)).items()}
    x = torch.randn(256, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ideal = projector_outputs(old, x) @ a.T + c  # the old projector's output, mapped exactly
    error = (projector_outputs(new, x) - ideal).norm() / (ideal - ideal.mean(0)).norm()
    with safe_open(str(out), "pt") as f:
        report = json.loads(f.metadata()["tinyvlm_port_report"])
    return float(error), report, old, new


@pytest.mark.parametrize("noise", [0.0, 0.02, 0.2])
def test_embedding_map_matches_the_ideal_map_within_the_noise(tmp_path, noise):
    error, report, old, new = port_with_map(tmp_path, noise)
    # Exact without noise; with noise the error grows in proportion to it (measured ~0.96 x noise for
    # 400 shared tokens and a 24 -> 8 map), never beyond twice the noise level.
    assert error <= 1e-5 + 2 * noise
    assert report["embedding_map"]["shared_tokens"] == 400
    residual = report["embedding_map"]["relative_residual"]
    assert residual == pytest.approx(
        report["tensors"]["multi_modal_projector.linear_2.weight"]["fit_relative_residual"]
    )
    assert (residual < 1e-6) if noise == 0 else (0.2 * noise < residual < 2 * noise)
    assert torch.equal(new["linear_1.weight"], old["linear_1.weight"])
    assert report["tensors"]["multi_modal_projector.linear_2.bias"]["action"] == "mapped"


def test_embedding_map_beats_a_fresh_linear_2(tmp_path):
    """Guards the test above: a fresh linear_2 is far from the ideal map."""
    mapped, *_ = port_with_map(tmp_path / "a", 0.02)
    fresh, *_ = port_with_map(tmp_path / "b", 0.02, strategy="keep-input")
    assert fresh > 0.5 and mapped < fresh / 20


def test_embedding_map_flags_are_checked(tmp_path, real_projector):
    source = write_format(tmp_path / "in", "llava", real_projector)
    out = tmp_path / "p.safetensors"
    with pytest.raises(ValueError, match="needs --old-llm and --new-llm"):
        run("--input", source, "--output", out, "--strategy", "embedding-map")
    with pytest.raises(ValueError, match="only read by --strategy embedding-map"):
        run("--input", source, "--output", out, "--old-llm", tmp_path)
    assert_nothing_written(tmp_path, out)


def test_embedding_map_refuses_an_old_llm_of_another_width(tmp_path):
    old_llm, new_llm, _, _ = synthetic_llm_pair(tmp_path, 0.0, old_hidden=20)
    source = write_format(
        tmp_path / "in", "llava", projector_tensors(vision=12, hidden=32, out=24, dtype=torch.float32)
    )
    out = tmp_path / "p.safetensors"
    with pytest.raises(ValueError, match="writes 24-dim embeddings but --old-llm has 20-dim"):
        run("--input", source, "--output", out, "--strategy", "embedding-map", "--vision-hidden-size", 12,
            "--target-hidden-size", 8, "--old-llm", old_llm, "--new-llm", new_llm)  # fmt: skip
    assert_nothing_written(tmp_path, out)


def test_canonical_vocab_matches_byte_level_and_sentencepiece_spellings():
    old = {"Ġthe": 5, "the": 6, "Ġcaf\u00c3\u00a9": 7, "\u00c3": 8}  # "Ġcafé" in GPT-2 bytes; a lone byte
    new = {"▁the": 1, "the": 2, "▁café": 3}
    assert pp.shared_token_ids(old, new) == ([5, 6, 7], [1, 2, 3])


def test_fit_needs_more_tokens_than_dimensions():
    with pytest.raises(ValueError, match="only 10 shared tokens to fit a map from 16 dims"):
        pp.fit_embedding_map(torch.randn(10, 16), torch.randn(10, 4))
