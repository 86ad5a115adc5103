"""Port an old LLaVA-style projector (SigLIP -> Llama-3-8B, 4096 wide) to tinyvlm (TinyLlama, 2048 wide).

    old:  linear_1 (1152 -> 4096) -> GELU -> linear_2 (4096 -> 4096)   reads SigLIP, writes Llama-3 embeddings
    new:  linear_1 (1152 -> P)    -> GELU -> linear_2 (P -> 2048)      reads SigLIP, writes TinyLlama embeddings

Design choices:
- The input side is the part worth keeping: it was trained on the same SigLIP features. It carries over
  only when the vision widths agree; a CLIP projector (1024 in) against SigLIP (1152) is refused.
- The output side points into Llama-3's embedding space and cannot be copied into 2048 dims. The
  strategies (STRATEGIES below) keep what can be kept and the JSON report says, tensor by tensor, what
  was kept, mapped or re-initialised, and the fit error of a mapped one.
- `embedding-map` fits TinyLlama's input embeddings as a linear function of the old LLM's over the
  tokens both vocabularies share (least squares in float64 with an intercept), then composes it with
  the old `linear_2`: phase 2 then starts from a projector that already points the right way.
- Parsing and porting are pure functions over a `{key: tensor}` mapping; files are read lazily (a full
  model checkpoint costs only the four projector tensors) and the output is written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import logging

from .from_checkpoints import CheckpointReader, resolve_weight_path

logger = logging.get_logger(__name__)

# format -> (key prefix of linear_1, key prefix of linear_2, pattern of every key the projector owns).
# A key matching the pattern but not one of the four expected ones (e.g. `mm_projector.4.weight` of an
# mlp3x projector, or `mm_projector.weight` of a plain linear one) is a layout we cannot port.
PROJECTOR_FORMATS: dict[str, tuple[str, str, str]] = {
    # LLaVA / Bunny `mm_projector.bin` (nn.Sequential: 0 = Linear, 1 = GELU, 2 = Linear)
    "llava": ("model.mm_projector.0", "model.mm_projector.2", r"model\.mm_projector\."),
    # LLaVA LoRA run `non_lora_trainables.bin` (PEFT's `base_model.model.` wrapper)
    "llava-lora": (
        "base_model.model.model.mm_projector.0",
        "base_model.model.model.mm_projector.2",
        r"base_model\.model\.model\.mm_projector\.",
    ),
    # xtuner `projector/model.safetensors` (ProjectorModel.model = nn.Sequential)
    "xtuner": ("model.0", "model.2", r"model\.\d+\."),
    # transformers Llava before ~4.52, and tinyvlm's own projector files
    "llava-hf": (
        "multi_modal_projector.linear_1",
        "multi_modal_projector.linear_2",
        r"multi_modal_projector\.",
    ),
    # transformers Llava from ~4.52 (LlavaModel under `model.`)
    "llava-hf-new": (
        "model.multi_modal_projector.linear_1",
        "model.multi_modal_projector.linear_2",
        r"model\.multi_modal_projector\.",
    ),
    # TinyLLaVA Factory (`connector/pytorch_model.bin` or a full checkpoint)
    "tinyllava": ("connector._connector.0", "connector._connector.2", r"connector\._connector\."),
}
# Where a folder keeps its projector, most specific first.
PROJECTOR_FILE_NAMES = (
    "mm_projector.bin",
    "non_lora_trainables.bin",
    "projector/model.safetensors",
    "connector/pytorch_model.bin",
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
CANONICAL = ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias")
OUTPUT_PREFIX = "multi_modal_projector."
STRATEGIES = {
    "keep-input": (
        "keep linear_1 as trained (projector_hidden_size stays the old width, e.g. 4096); linear_2 "
        "(P -> target) is freshly initialised like torch.nn.Linear"
    ),
    "reinit": "only the shapes carry over: linear_1 and linear_2 are both freshly initialised",
    "embedding-map": (
        "keep linear_1; linear_2 = M @ old linear_2 (bias: M b + c), where x -> M x + c is a least-squares "
        "map from the old LLM's input embeddings to the new LLM's, fitted over the tokens both "
        "vocabularies share (needs --old-llm and --new-llm)"
    ),
}
# Input-embedding key names of LLM checkpoints, for --old-llm / --new-llm.
EMBEDDING_KEYS = (
    "model.embed_tokens.weight",
    "embed_tokens.weight",
    "language_model.model.embed_tokens.weight",
    "model.language_model.embed_tokens.weight",
)


# ---------------------------------------------------------------------------------------------------
# Parsing (pure)
# ---------------------------------------------------------------------------------------------------


def detect_format(state_dict: Mapping, source: str = "state dict") -> str:
    """The PROJECTOR_FORMATS name whose keys `state_dict` holds; ValueError if none or several."""
    claims = {fmt: [k for k in state_dict if re.match(spec[2], k)] for fmt, spec in PROJECTOR_FORMATS.items()}
    found = [fmt for fmt, keys in claims.items() if keys]
    if len(found) == 1:
        return found[0]
    if not found:
        sample = ", ".join(list(state_dict)[:8]) or "(no keys)"
        expected = "; ".join(f"{fmt}: {spec[0]}.weight" for fmt, spec in PROJECTOR_FORMATS.items())
        raise ValueError(
            f"{source}: no projector keys found (keys start: {sample}); expected one of {expected}"
        )
    detail = "; ".join(f"{fmt}: {claims[fmt][0]}" for fmt in found)
    raise ValueError(f"{source}: keys of several projector formats ({detail}); pass --format")


def extract_projector(
    state_dict: Mapping, fmt: str, source: str = "state dict"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The four projector tensors under canonical names (`linear_1.weight`, ...), and their source keys."""
    if fmt not in PROJECTOR_FORMATS:
        raise ValueError(f"unknown projector format {fmt!r}; known: {', '.join(PROJECTOR_FORMATS)}")
    first, second, pattern = PROJECTOR_FORMATS[fmt]
    source_keys = {
        "linear_1.weight": f"{first}.weight",
        "linear_1.bias": f"{first}.bias",
        "linear_2.weight": f"{second}.weight",
        "linear_2.bias": f"{second}.bias",
    }
    missing = [key for key in source_keys.values() if key not in state_dict]
    if missing:
        raise ValueError(f"{source}: {fmt} projector is missing key(s) {', '.join(missing)}")
    extra = [k for k in state_dict if re.match(pattern, k) and k not in source_keys.values()]
    if extra:
        raise ValueError(
            f"{source}: unexpected {fmt} projector key(s) {', '.join(extra)}; only a two-layer MLP "
            "(Linear, GELU, Linear: mlp2x_gelu) can be ported"
        )
    tensors = {name: state_dict[key] for name, key in source_keys.items()}
    check_projector_shapes(tensors, source_keys, source)
    return tensors, source_keys


def check_projector_shapes(
    tensors: dict[str, torch.Tensor], source_keys: dict[str, str], source: str
) -> None:
    """linear_1.weight (P, V), linear_1.bias (P,), linear_2.weight (H, P), linear_2.bias (H,)."""
    w1 = tensors["linear_1.weight"]
    if w1.ndim != 2 or 0 in w1.shape:
        raise ValueError(
            f"{source}: {source_keys['linear_1.weight']} has shape {list(w1.shape)}, expected (P, V)"
        )
    hidden = tensors["linear_2.weight"].shape[0] if tensors["linear_2.weight"].ndim == 2 else -1
    expected = {
        "linear_1.bias": (w1.shape[0],),
        "linear_2.weight": (hidden, w1.shape[0]),
        "linear_2.bias": (hidden,),
    }
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape or hidden <= 0:
            raise ValueError(
                f"{source}: {source_keys[name]} has shape {list(tensors[name].shape)}, expected {list(shape)} "
                f"(P = {w1.shape[0]} from {source_keys['linear_1.weight']})"
            )
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(
                f"{source}: {source_keys[name]} has dtype {tensor.dtype}, expected a float dtype"
            )


# ---------------------------------------------------------------------------------------------------
# Embedding map (pure)
# ---------------------------------------------------------------------------------------------------


@dataclass
class EmbeddingMap:
    """new_embedding ~= matrix @ old_embedding + intercept, fitted over `num_tokens` shared tokens."""

    matrix: torch.Tensor  # (new_hidden, old_hidden), float64
    intercept: torch.Tensor  # (new_hidden,), float64
    relative_residual: float  # ||fit - new|| / ||new - mean(new)|| over the shared tokens
    num_tokens: int


def fit_embedding_map(old_rows: torch.Tensor, new_rows: torch.Tensor) -> EmbeddingMap:
    """Least squares in float64: old_rows (n, old_hidden), new_rows (n, new_hidden), row i = token i."""
    n, old_hidden = old_rows.shape
    if new_rows.shape[0] != n:
        raise ValueError(f"old_rows has {n} rows but new_rows has {new_rows.shape[0]}")
    if n < old_hidden + 1:
        raise ValueError(
            f"only {n} shared tokens to fit a map from {old_hidden} dims (+ intercept): need at least "
            f"{old_hidden + 1}; the vocabularies overlap too little for --strategy embedding-map"
        )
    x, y = old_rows.double(), new_rows.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    logger.info(
        "fitting a %d -> %d embedding map over %d shared tokens (float64)", old_hidden, new_rows.shape[1], n
    )
    # Centring fits the intercept without a column of ones and keeps the system well conditioned.
    # gelsy (pivoted QR) copes with a rank-deficient table and is ~4x faster than the SVD-based gelsd:
    # 20000 x 4096 took 2 min on 2 busy cores, against 9 min.
    solution = torch.linalg.lstsq(x - x_mean, y - y_mean, driver="gelsy").solution  # (old_hidden, new_hidden)
    matrix = solution.T.contiguous()
    intercept = y_mean - matrix @ x_mean
    residual = (x @ matrix.T + intercept - y).norm() / (y - y_mean).norm().clamp_min(1e-300)
    return EmbeddingMap(matrix, intercept, float(residual), n)


_BYTE_LEVEL_SPACE = "\u0120"  # "Ġ": GPT-2 byte-level BPE's space (Llama 3)
_SENTENCEPIECE_SPACE = "\u2581"  # "▁": SentencePiece's space (Llama 2, TinyLlama)


def _byte_decoder() -> dict[str, int]:
    # GPT-2's bytes_to_unicode, inverted: printable bytes map to themselves, the rest to 256 + i.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def canonical_vocab(vocab: Mapping[str, int]) -> dict[str, int]:
    """Token strings in one spelling: text with SentencePiece's "▁" for spaces.

    Llama 3's byte-level tokens ("Ġthe") and TinyLlama's SentencePiece tokens ("▁the") name the same
    text differently; matching raw strings would share almost nothing. Byte-level tokens that are not
    whole UTF-8 characters are left out.
    """
    byte_level = sum(t.startswith(_BYTE_LEVEL_SPACE) for t in vocab) > sum(
        t.startswith(_SENTENCEPIECE_SPACE) for t in vocab
    )
    if not byte_level:
        return dict(vocab)
    decoder, out = _byte_decoder(), {}
    for token, index in vocab.items():
        try:
            text = bytes(decoder[c] for c in token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue
        out.setdefault(text.replace(" ", _SENTENCEPIECE_SPACE), index)
    return out


def shared_token_ids(
    old_vocab: Mapping[str, int], new_vocab: Mapping[str, int]
) -> tuple[list[int], list[int]]:
    """Row ids (old, new) of the tokens both vocabularies spell the same way, in a stable order."""
    old, new = canonical_vocab(old_vocab), canonical_vocab(new_vocab)
    tokens = sorted(set(old) & set(new), key=lambda t: new[t])
    return [old[t] for t in tokens], [new[t] for t in tokens]


def embedding_map_from_tables(
    old_table: torch.Tensor,
    old_vocab: Mapping[str, int],
    new_table: torch.Tensor,
    new_vocab: Mapping[str, int],
) -> EmbeddingMap:
    """Fit the map over the shared tokens whose ids have a row in both tables."""
    old_ids, new_ids = shared_token_ids(old_vocab, new_vocab)
    keep = [(o, n) for o, n in zip(old_ids, new_ids) if o < old_table.shape[0] and n < new_table.shape[0]]
    if not keep:
        raise ValueError("the old and new LLM vocabularies share no token")
    old_ids, new_ids = (list(ids) for ids in zip(*keep))
    return fit_embedding_map(old_table[old_ids], new_table[new_ids])


# ---------------------------------------------------------------------------------------------------
# Porting (pure)
# ---------------------------------------------------------------------------------------------------


def fresh_linear(out_features: int, in_features: int, generator: torch.Generator, dtype: torch.dtype):
    """torch.nn.Linear's default init, U(-1/sqrt(in), 1/sqrt(in)) for weight and bias, from `generator`."""
    bound = 1.0 / math.sqrt(in_features)
    weight = torch.empty(out_features, in_features).uniform_(-bound, bound, generator=generator)
    bias = torch.empty(out_features).uniform_(-bound, bound, generator=generator)
    return weight.to(dtype), bias.to(dtype)


def init_projector(
    vision_hidden_size: int, projector_hidden_size: int, text_hidden_size: int, seed: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """A freshly initialised projector under canonical names (what a build without --projector uses)."""
    generator = torch.Generator().manual_seed(seed)
    w1, b1 = fresh_linear(projector_hidden_size, vision_hidden_size, generator, dtype)
    w2, b2 = fresh_linear(text_hidden_size, projector_hidden_size, generator, dtype)
    return {"linear_1.weight": w1, "linear_1.bias": b1, "linear_2.weight": w2, "linear_2.bias": b2}


def port_projector(
    state_dict: Mapping,
    *,
    fmt: str = "auto",
    strategy: str = "keep-input",
    target_hidden_size: int = 2048,
    vision_hidden_size: int = 1152,
    embedding_map: EmbeddingMap | None = None,
    seed: int = 0,
    source: str = "state dict",
) -> tuple[dict[str, torch.Tensor], dict]:
    """Old projector -> ({`multi_modal_projector.linear_{1,2}.{weight,bias}`: tensor}, report dict).

    Kept tensors are the source tensors themselves (bit-identical, source dtype); new ones take the
    dtype of the source's linear_1.weight.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if (strategy == "embedding-map") != (embedding_map is not None):
        raise ValueError("an embedding map is needed by, and only by, --strategy embedding-map")
    fmt = detect_format(state_dict, source) if fmt == "auto" else fmt
    old, source_keys = extract_projector(state_dict, fmt, source)
    hidden, old_out = old["linear_1.weight"].shape[0], old["linear_2.weight"].shape[0]
    width = old["linear_1.weight"].shape[1]
    check_vision_width(old, source_keys, vision_hidden_size, source)
    dtype = old["linear_1.weight"].dtype
    new = init_projector(vision_hidden_size, hidden, target_hidden_size, seed, dtype)
    actions = dict.fromkeys(CANONICAL, "reinitialised")
    if strategy in ("keep-input", "embedding-map"):
        new["linear_1.weight"], new["linear_1.bias"] = old["linear_1.weight"], old["linear_1.bias"]
        actions["linear_1.weight"] = actions["linear_1.bias"] = "kept"
    if strategy == "embedding-map":
        new["linear_2.weight"], new["linear_2.bias"] = _map_linear_2(
            old, embedding_map, target_hidden_size, source
        )
        actions["linear_2.weight"] = actions["linear_2.bias"] = "mapped"
    tensors = {OUTPUT_PREFIX + name: new[name] for name in CANONICAL}
    report = _report(source, fmt, strategy, seed, source_keys, actions, tensors, embedding_map)
    report.update(vision_hidden_size=width, projector_hidden_size=hidden, old_output_size=old_out)
    report.update(target_hidden_size=target_hidden_size, dtype=str(dtype).removeprefix("torch."))
    return tensors, report


def check_vision_width(old: dict, source_keys: dict, vision_hidden_size: int, source: str) -> None:
    """The input side carries over only from a vision encoder of the same width."""
    width = old["linear_1.weight"].shape[1]
    if width != vision_hidden_size:
        raise ValueError(
            f"{source}: {source_keys['linear_1.weight']} takes {width}-wide vision features but the vision "
            f"tower is {vision_hidden_size} wide: a projector trained on another vision encoder (CLIP "
            "ViT-L is 1024, SigLIP-so400m 1152) does not carry over"
        )


def check_map_widths(old_output: int, old_hidden: int, new_hidden: int, target_hidden_size: int, source: str):
    """The old LLM must be the one the projector wrote into, the new one the target width."""
    if old_hidden != old_output:
        raise ValueError(
            f"{source}: the old projector writes {old_output}-dim embeddings but --old-llm has "
            f"{old_hidden}-dim embeddings: it is not the LLM this projector was trained with"
        )
    if new_hidden != target_hidden_size:
        raise ValueError(
            f"--new-llm has {new_hidden}-dim embeddings but --target-hidden-size is {target_hidden_size}"
        )


def _map_linear_2(old: dict, mapping: EmbeddingMap, target_hidden_size: int, source: str):
    new_hidden, old_hidden = mapping.matrix.shape
    check_map_widths(old["linear_2.weight"].shape[0], old_hidden, new_hidden, target_hidden_size, source)
    dtype = old["linear_2.weight"].dtype
    weight = mapping.matrix @ old["linear_2.weight"].double()  # (new_hidden, P)
    bias = mapping.matrix @ old["linear_2.bias"].double() + mapping.intercept  # (new_hidden,)
    return weight.to(dtype), bias.to(dtype)


def _report(source, fmt, strategy, seed, source_keys, actions, tensors, embedding_map) -> dict:
    entries = {}
    for name in CANONICAL:
        entry = {"action": actions[name], "shape": list(tensors[OUTPUT_PREFIX + name].shape)}
        if actions[name] != "reinitialised":
            entry["source_key"] = source_keys[name]
        if actions[name] == "reinitialised":
            entry["init"] = f"uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch.nn.Linear, seed {seed}"
        if actions[name] == "mapped":
            entry["fit_relative_residual"] = embedding_map.relative_residual
        entries[OUTPUT_PREFIX + name] = entry
    report = {"input": str(source), "format": fmt, "strategy": strategy, "seed": seed, "tensors": entries}
    if embedding_map is not None:
        report["embedding_map"] = {
            "shared_tokens": embedding_map.num_tokens,
            "relative_residual": embedding_map.relative_residual,
            "intercept": True,
        }
    return report


# ---------------------------------------------------------------------------------------------------
# I/O
# ---------------------------------------------------------------------------------------------------


def open_projector_source(path: str | os.PathLike) -> CheckpointReader:
    """A lazy reader over a projector file, or over the known projector file inside a folder."""
    return CheckpointReader(resolve_weight_path(Path(path), PROJECTOR_FILE_NAMES))


def read_projector(path: str | os.PathLike, fmt: str = "auto") -> tuple[dict[str, torch.Tensor], str, str]:
    """(canonical tensors, format, file) of any PROJECTOR_FORMATS checkpoint; what `build --projector` reads."""
    reader = open_projector_source(path)
    source = str(reader.path)
    fmt = detect_format(reader, source) if fmt == "auto" else fmt
    tensors, _ = extract_projector(reader, fmt, source)
    return tensors, fmt, source


def load_llm_embeddings(path: str | os.PathLike, flag: str) -> tuple[torch.Tensor, dict[str, int]]:
    """(input embedding table (vocab, hidden), {token: id}) of an LLM folder, or of a weight file whose
    folder holds the tokenizer."""
    path = Path(path)
    reader = CheckpointReader(path)
    key = next((k for k in EMBEDDING_KEYS if k in reader), None)
    if key is None:
        raise ValueError(
            f"--{flag} {reader.path}: no input embedding table; looked for {', '.join(EMBEDDING_KEYS)}"
        )
    table = reader[key]
    if table.ndim != 2:
        raise ValueError(
            f"--{flag} {reader.file_of(key)}: {key} has shape {list(table.shape)}, expected (vocab, hidden)"
        )
    return table, _load_vocab(path if path.is_dir() else path.parent, flag)


def _load_vocab(folder: Path, flag: str) -> dict[str, int]:
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # Special tokens (<unk>, <s>, <|begin_of_text|>) mean different things per model: not matched.
        specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        return {t: i for t, i in tokenizer.get_vocab(with_added_tokens=False).items() if t not in specials}
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.model").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        specials = set(tokenizer.all_special_tokens)
        return {t: i for t, i in tokenizer.get_vocab().items() if t not in specials}
    raise FileNotFoundError(f"--{flag}: no tokenizer (tokenizer.json or tokenizer_config.json) in {folder}")


@contextlib.contextmanager
def atomic_files(*paths: Path):
    """Yield temp paths beside `paths`; all are renamed into place on success, all removed on error."""
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temps = [path.with_name(f".{path.name}.tmp-{token}") for path in paths]
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        yield temps
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def save_projector(
    tensors: dict[str, torch.Tensor], report: dict, output: Path, report_path: Path | None
) -> None:
    """Projector safetensors (report in the header) and, if asked, the JSON report; atomically."""
    from safetensors.torch import save_file

    # "format" stays "pt", the key transformers checks when it loads a safetensors file.
    metadata = {
        "format": "pt",
        "source_format": report["format"],
        "strategy": report["strategy"],
        "projector_hidden_size": str(report["projector_hidden_size"]),
        "vision_hidden_size": str(report["vision_hidden_size"]),
        "target_hidden_size": str(report["target_hidden_size"]),
        "tinyvlm_port_report": json.dumps(report),
    }
    paths = [output] + ([report_path] if report_path else [])
    with atomic_files(*paths) as temps:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(temps[0]), metadata=metadata)
        if report_path:
            temps[1].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------

EPILOG = """strategies for the output side (old LLM width -> --target-hidden-size):
{strategies}

example:
  tinyvlm port-projector --input checkpoints/llava-siglip-llama3/mm_projector.bin \\
      --output projector.safetensors --report projector.json
  tinyvlm port-projector --input run/ --output projector.safetensors --strategy embedding-map \\
      --old-llm Meta-Llama-3-8B-Instruct/ --new-llm TinyLlama-1.1B-Chat-v1.0/
  tinyvlm build --vision siglip-so400m-patch14-384/ --llm TinyLlama-1.1B-Chat-v1.0/ \\
      --projector projector.safetensors --output tinyvlm-init/
"""


def build_parser() -> argparse.ArgumentParser:
    strategies = "\n".join(f"  {name}: {text}" for name, text in STRATEGIES.items())
    parser = argparse.ArgumentParser(
        prog="tinyvlm port-projector",
        description="Port an old LLaVA-style projector checkpoint (e.g. SigLIP -> Llama-3-8B) to tinyvlm's "
        "TinyLlama width. Writes a projector safetensors file that `tinyvlm build --projector` takes.",
        epilog=EPILOG.format(strategies=strategies),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input",
        required=True,
        help="projector file, or a folder holding one of " + ", ".join(PROJECTOR_FILE_NAMES),
    )
    parser.add_argument("--output", required=True, type=Path, help="projector .safetensors file to write")
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", *PROJECTOR_FORMATS],
        help="key layout (default: detected)",
    )
    parser.add_argument(
        "--target-hidden-size", type=int, default=2048, help="new LLM width (TinyLlama: 2048)"
    )
    parser.add_argument(
        "--strategy", default="keep-input", choices=list(STRATEGIES), help="output side, see below"
    )
    parser.add_argument(
        "--vision-hidden-size", type=int, default=1152, help="vision tower width (SigLIP-so400m: 1152)"
    )
    parser.add_argument(
        "--old-llm",
        help="embedding-map: the LLM the projector was trained with (folder or safetensors file + tokenizer)",
    )
    parser.add_argument(
        "--new-llm", help="embedding-map: the new LLM (folder or safetensors file + tokenizer)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the freshly initialised tensors")
    parser.add_argument(
        "--report", type=Path, help="also write the JSON report here (it is always in the file's header)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    for path in (args.output, args.report):
        if path is not None and path.exists() and not args.overwrite:
            raise FileExistsError(f"{path} exists (pass --overwrite to replace it)")
    reader = open_projector_source(args.input)
    source = str(reader.path)
    fmt = detect_format(reader, source) if args.format == "auto" else args.format
    # Refuse a bad input before the (minutes-long, at real size) embedding-map fit.
    old, source_keys = extract_projector(reader, fmt, source)
    check_vision_width(old, source_keys, args.vision_hidden_size, source)
    mapping = _embedding_map_from_args(args, old["linear_2.weight"].shape[0], source)
    tensors, report = port_projector(
        reader,
        fmt=fmt,
        strategy=args.strategy,
        target_hidden_size=args.target_hidden_size,
        vision_hidden_size=args.vision_hidden_size,
        embedding_map=mapping,
        seed=args.seed,
        source=source,
    )
    if mapping is not None:
        report["embedding_map"].update(old_llm=str(args.old_llm), new_llm=str(args.new_llm))
    save_projector(tensors, report, args.output, args.report)
    print(_summary(reader, report, args.output))
    return 0


def _embedding_map_from_args(args: argparse.Namespace, old_output: int, source: str) -> EmbeddingMap | None:
    if args.strategy != "embedding-map":
        if args.old_llm or args.new_llm:
            raise ValueError("--old-llm and --new-llm are only read by --strategy embedding-map")
        return None
    if not (args.old_llm and args.new_llm):
        raise ValueError("--strategy embedding-map needs --old-llm and --new-llm")
    old_table, old_vocab = load_llm_embeddings(args.old_llm, "old-llm")
    new_table, new_vocab = load_llm_embeddings(args.new_llm, "new-llm")
    check_map_widths(old_output, old_table.shape[1], new_table.shape[1], args.target_hidden_size, source)
    return embedding_map_from_tables(old_table, old_vocab, new_table, new_vocab)


def _summary(reader: CheckpointReader, report: dict, output: Path) -> str:
    lines = [f"found    {report['format']} projector in {reader.path} ({report['dtype']})"]
    for entry in report["tensors"].values():
        if "source_key" in entry:
            lines.append(f"           {entry['source_key']} {list(reader[entry['source_key']].shape)}")
    lines.append(f"strategy {report['strategy']} -> {output}")
    for name, entry in report["tensors"].items():
        fit = (
            f" (fit relative residual {entry['fit_relative_residual']:.4f})"
            if "fit_relative_residual" in entry
            else ""
        )
        lines.append(f"           {name} {entry['shape']} {entry['action']}{fit}")
    return "\n".join(lines)
