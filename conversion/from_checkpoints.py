"""Build a tinyvlm folder from a SigLIP checkpoint and a Llama checkpoint (`tinyvlm build --vision --llm`).

    SigLIP  (SiglipModel or SiglipVisionModel, 4.x or 5.x key layout) --vision_model./flat--> vision_tower.*
    Llama   (LlamaForCausalLM + tokenizer)                            ------------------> language_model.*
    projector file (any `port-projector` format), or a fresh one     ------------------> multi_modal_projector.*

Design choices:
- Weights are read straight from the files (`safetensors.safe_open`, sharded indexes too; `.bin` only
  through `torch.load(weights_only=True)`), never through a model class: 5.x renames a 4.x layout behind
  our back and 4.57 silently re-initialises a 5.x-saved SigLIP (TRANSFORMERS-NOTES).
- Every source key is placed by the key table below or dropped for a stated reason (SigLIP's text tower,
  derived buffers); the result is compared key by key with the model's own state dict, and any key
  unknown, missing or of the wrong shape is an error that lists them. Source tensors are assigned, not
  copied into random weights, so they land bit-identical (unless `dtype` asks for a cast).
- `<image>` (and `<pad>` when the LLM has none) are added as special tokens; their new embedding and
  lm_head rows start at the mean of the existing rows, a point inside the embedding cloud rather than
  random noise whose norm the LLM has never seen.
- The output folder is written to a temporary sibling and renamed (`utils.atomic_dir`): a failed build
  leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig
from transformers.utils import logging

from ..modeling_tinyvlm import TinyVLMConfig, TinyVLMForConditionalGeneration, TinyVLMProcessor
from ..modeling_tinyvlm.processing_tinyvlm import DEFAULT_CHAT_TEMPLATE
from .tokenizer import IMAGE_TOKEN, add_vlm_tokens
from .utils import atomic_dir, save_model_folder

logger = logging.get_logger(__name__)

# Where a checkpoint folder keeps its weights, preferred first.
WEIGHT_FILE_NAMES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
# What a Hub snapshot needs: configs, tokenizer, image processor, weights (safetensors first; `.bin`
# is fetched only when a repo has no safetensors, so a repo with both is not downloaded twice).
HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
]
HUB_WEIGHT_PATTERNS = (["model*.safetensors", "model.safetensors.index.json"], ["pytorch_model*.bin*"])

# Key table. SigLIP: a full SiglipModel (both layouts) and a 4.x SiglipVisionModel nest the tower under
# `vision_model.`; a 5.x SiglipVisionModel saves it flat. Llama: the whole LlamaForCausalLM, prefixed.
SIGLIP_NESTED_PREFIX = "vision_model."
VISION_TARGET_PREFIX = "vision_tower."
LLM_TARGET_PREFIX = "language_model."
EMBED_KEY = "language_model.model.embed_tokens.weight"
LM_HEAD_KEY = "language_model.lm_head.weight"
# Source keys dropped on purpose, with the reason the report gives.
SIGLIP_TEXT_TOWER = ("text_model.", "logit_scale", "logit_bias")
DERIVED_BUFFERS = ("rotary_emb.inv_freq", "embeddings.position_ids")
# Image processor settings taken from the vision checkpoint; SigLIP's defaults otherwise.
IMAGE_PROCESSOR_KEYS = (
    "do_resize",
    "size",
    "resample",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------------
# Reading checkpoints (also used by port_projector)
# ---------------------------------------------------------------------------------------------------


def _unreadable(path: Path, err: BaseException) -> ValueError:
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(
        f"{path}: cannot read checkpoint, the file is truncated, corrupt or not a checkpoint ({first_line})"
    )


def _safetensors_keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from err


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        # weights_only: a .bin is a pickle; never run arbitrary code from a downloaded checkpoint.
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise _unreadable(path, err) from err
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, found a {type(data).__name__}")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(data):
        logger.warning("%s: ignoring %d non-tensor entries", path, len(data) - len(tensors))
    return tensors


class CheckpointReader(Mapping):
    """Read-only, lazy `{key: tensor}` view of one weight file or of the shards an index names.

    `path` is a `.safetensors`/`.bin` file, a `*.index.json`, or a folder holding one of WEIGHT_FILE_NAMES.
    Safetensors are opened per tensor (memory-mapped), so a 16 GB checkpoint costs only what is read.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = resolve_weight_path(Path(path))
        self._where: dict[str, Path] = {}
        self._bins: dict[Path, dict[str, torch.Tensor]] = {}
        files = self._index_files(self.path) if self.path.name.endswith(".index.json") else [self.path]
        for file in files:
            if file.suffix == ".safetensors":
                keys = _safetensors_keys(file)
            else:
                self._bins[file] = _torch_load(file)
                keys = list(self._bins[file])
            for key in keys:
                if key in self._where:
                    raise ValueError(f"{file}: key {key!r} is also in {self._where[key]}")
                self._where[key] = file
        if self.path.name.endswith(".index.json"):
            self._check_index(self.path)

    def _index_files(self, index: Path) -> list[Path]:
        self._index_map = _read_index(index)
        files = sorted(set(self._index_map.values()))
        for name in files:
            if not (index.parent / name).is_file():
                raise FileNotFoundError(f"{index} names shard {name}, which is missing from {index.parent}")
        return [index.parent / name for name in files]

    def _check_index(self, index: Path) -> None:
        for key, shard in self._index_map.items():
            if self._where.get(key) != index.parent / shard:
                raise ValueError(
                    f"{index} places {key!r} in {shard}, but {index.parent / shard} does not hold it"
                )

    @property
    def files(self) -> list[Path]:
        return sorted(set(self._where.values()))

    def file_of(self, key: str) -> Path:
        return self._where[key]

    def __getitem__(self, key: str) -> torch.Tensor:
        file = self._where[key]
        if file in self._bins:
            return self._bins[file][key]
        try:
            with safe_open(str(file), framework="pt") as f:
                return f.get_tensor(key)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{file}: cannot read tensor {key!r} ({err})") from err

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _read_index(index: Path) -> dict[str, str]:
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{index}: not a sharded-checkpoint index (no readable 'weight_map': {err})"
        ) from err
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index}: 'weight_map' must map tensor names to shard files")
    return weight_map


def resolve_weight_path(path: Path, names: tuple[str, ...] = WEIGHT_FILE_NAMES) -> Path:
    """A weight file as given, or the first of `names` inside a folder."""
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds no weights: looked for {', '.join(names)}")
    raise FileNotFoundError(f"{path} does not exist")


# ---------------------------------------------------------------------------------------------------
# Hub id or local folder
# ---------------------------------------------------------------------------------------------------


def resolve_checkpoint(name: str, flag: str, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub repo id through huggingface_hub's download and cache
    (so HF_HUB_OFFLINE=1 with a filled cache works)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(
            f"--{flag} {name} is a file; pass the checkpoint folder (config.json + weights) or a Hub id"
        )
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"--{flag} {name}: no such folder")
    from huggingface_hub import snapshot_download

    try:
        for weights in HUB_WEIGHT_PATTERNS:
            folder = Path(snapshot_download(name, revision=revision, allow_patterns=HUB_PATTERNS + weights))
            if any((folder / weight).is_file() for weight in WEIGHT_FILE_NAMES):
                return folder
    except (OSError, ValueError) as err:  # offline/not cached, unknown repo, invalid id
        raise FileNotFoundError(
            f"--{flag} {name}: not a local folder, and the Hub download failed: {err}"
        ) from err
    raise FileNotFoundError(f"--{flag} {name}: the Hub repo has no {' or '.join(WEIGHT_FILE_NAMES)}")


# ---------------------------------------------------------------------------------------------------
# Key tables (pure): source key names -> tinyvlm key names
# ---------------------------------------------------------------------------------------------------


def plan_vision_keys(keys) -> tuple[dict[str, str], dict[str, str]]:
    """SigLIP source keys -> ({tinyvlm key: source key}, {dropped source key: reason})."""
    placed: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for key in keys:
        if key.startswith(SIGLIP_TEXT_TOWER):
            dropped[key] = "SigLIP text tower (the LLM reads the text)"
            continue
        if key.endswith(DERIVED_BUFFERS):
            dropped[key] = "derived buffer, recomputed from the config"
            continue
        rest = key[len(SIGLIP_NESTED_PREFIX) :] if key.startswith(SIGLIP_NESTED_PREFIX) else key
        _place(placed, VISION_TARGET_PREFIX + rest, key)
    return placed, dropped


def plan_llm_keys(keys) -> tuple[dict[str, str], dict[str, str]]:
    """LlamaForCausalLM source keys -> ({tinyvlm key: source key}, {dropped source key: reason})."""
    placed: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for key in keys:
        if key.endswith(DERIVED_BUFFERS):
            dropped[key] = "derived buffer, recomputed from the config"
            continue
        _place(placed, LLM_TARGET_PREFIX + key, key)
    return placed, dropped


def _place(placed: dict[str, str], target: str, source: str) -> None:
    if target in placed:
        raise ValueError(
            f"source keys {placed[target]!r} and {source!r} both map to {target!r} (mixed key layouts?)"
        )
    placed[target] = source


def grow_rows(table: torch.Tensor, num_rows: int) -> torch.Tensor:
    """(rows, hidden) -> (num_rows, hidden): existing rows untouched, new rows = mean of existing rows."""
    extra = num_rows - table.shape[0]
    if extra <= 0:
        return table
    mean = table.double().mean(dim=0).to(table.dtype)  # float64 sum: no drift over 32000 rows
    return torch.cat([table, mean.expand(extra, -1)])


def check_pieces_fit(vision_config, text_config, projector: dict[str, torch.Tensor], source: str) -> None:
    """The projector's input must be the vision width, its output the LLM width."""
    w1, w2 = projector["linear_1.weight"], projector["linear_2.weight"]
    problems = []
    if w1.shape[1] != vision_config.hidden_size:
        problems.append(
            f"linear_1 takes {w1.shape[1]}-wide features but the vision tower is {vision_config.hidden_size} wide "
            "(a projector trained on another vision encoder cannot be reused)"
        )
    if w2.shape[0] != text_config.hidden_size:
        problems.append(
            f"linear_2 outputs {w2.shape[0]} dims but the LLM is {text_config.hidden_size} wide "
            f"(port it first: tinyvlm port-projector --target-hidden-size {text_config.hidden_size})"
        )
    if problems:
        raise ValueError(f"projector {source} does not fit: " + "; ".join(problems))


def resolve_dtype(name: str, state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    """`auto`: the sources' dtype, or when they differ (SigLIP fp32 + TinyLlama bf16) the type that holds
    every source value exactly (torch.promote_types), so no weight is rounded."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
        return DTYPES[name]
    found = {t.dtype for t in state_dict.values() if t.is_floating_point()}
    dtype = functools.reduce(torch.promote_types, sorted(found, key=str))
    if len(found) > 1:
        logger.warning(
            "sources mix %s: storing every tensor as %s, which holds each value exactly",
            sorted(map(str, found)),
            dtype,
        )
    return dtype


# ---------------------------------------------------------------------------------------------------
# Pieces: configs, tokenizer, image processor, weights
# ---------------------------------------------------------------------------------------------------


def load_vision_config(folder: Path):
    """SiglipVisionConfig of a SiglipModel (its vision half) or SiglipVisionModel checkpoint."""
    config = AutoConfig.from_pretrained(str(folder))
    if config.model_type == "siglip":
        return config.vision_config
    if config.model_type == "siglip_vision_model":
        return config
    raise ValueError(
        f"--vision {folder}: config.json has model_type {config.model_type!r}, expected 'siglip' or 'siglip_vision_model'"
    )


def load_text_config(folder: Path):
    config = AutoConfig.from_pretrained(str(folder))
    if config.model_type != "llama":
        raise ValueError(
            f"--llm {folder}: config.json has model_type {config.model_type!r}, expected 'llama' (LlamaForCausalLM)"
        )
    return config


def load_tokenizer(folder: Path):
    """The LLM's tokenizer with `<image>` (and `<pad>` if it has none) added, TinyLlama-Chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    base_size = len(tokenizer)
    added = add_vlm_tokens(tokenizer)
    # Same template on tokenizer and processor: both write chat_template files into the folder.
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer, base_size, {token: tokenizer.convert_tokens_to_ids(token) for token in added}


def load_image_processor(folder: Path, vision_config):
    """SiglipImageProcessor with the vision checkpoint's settings, SigLIP defaults for the rest."""
    from transformers import SiglipImageProcessor

    side = vision_config.image_size
    settings = {
        "do_resize": True,
        "size": {"height": side, "width": side},
        "resample": 3,  # PIL.Image.BICUBIC
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    found = _image_processor_json(folder)
    settings.update({k: v for k, v in found.items() if k in IMAGE_PROCESSOR_KEYS})
    size = settings["size"]
    if not isinstance(size, dict) or (size.get("height"), size.get("width")) != (side, side):
        raise ValueError(
            f"--vision {folder}: the image processor resizes to {size} but the vision tower takes "
            f"{side}x{side} images (vision_config.image_size)"
        )
    return SiglipImageProcessor(**settings)


def _image_processor_json(folder: Path) -> dict:
    # 4.x and most Hub repos: preprocessor_config.json; 5.24 nests it in processor_config.json.
    for name, nested in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        if (folder / name).is_file():
            data = json.loads((folder / name).read_text(encoding="utf-8"))
            data = data.get(nested, {}) if nested else data
            if data:
                return data
    logger.info("%s has no image processor config: SigLIP defaults", folder)
    return {}


def read_weights(
    folder: Path, plan, flag: str
) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str]]:
    """({tinyvlm key: tensor}, {tinyvlm key: 'file: source key'}, {dropped source key: reason})."""
    reader = CheckpointReader(folder)
    placed, dropped = plan(reader)
    tensors = {target: reader[source] for target, source in placed.items()}
    origins = {target: f"{reader.file_of(source)}: {source}" for target, source in placed.items()}
    logger.info(
        "--%s %s: %d tensors placed, %d dropped by design", flag, reader.path, len(placed), len(dropped)
    )
    return tensors, origins, dropped


def grow_embeddings(
    state_dict: dict[str, torch.Tensor], vocab_size: int, base_size: int, source: str
) -> dict:
    """Give the added tokens embed_tokens and lm_head rows (mean init); returns what the report says."""
    if EMBED_KEY not in state_dict:
        raise ValueError(f"--llm {source}: no model.embed_tokens.weight")
    rows = state_dict[EMBED_KEY].shape[0]
    if base_size > rows:
        raise ValueError(
            f"--llm {source}: the tokenizer has {base_size} tokens but embed_tokens has only {rows} rows"
        )
    num_rows = max(rows, vocab_size)
    for key in (EMBED_KEY, LM_HEAD_KEY):
        if key in state_dict:
            state_dict[key] = grow_rows(state_dict[key], num_rows)
    if vocab_size <= rows and vocab_size > base_size:
        logger.warning(
            "the added tokens got ids inside the existing %d-row table: their rows keep the checkpoint's values",
            rows,
        )
    return {"rows_before": rows, "rows_after": num_rows, "new_rows_init": "mean of the existing rows"}


def projector_weights(path, fmt: str, vision_config, text_config, seed: int, dtype: torch.dtype):
    """(canonical projector tensors, report entry): from a projector file, or freshly initialised."""
    from .port_projector import init_projector, read_projector

    if path is None:
        width = text_config.hidden_size
        tensors = init_projector(vision_config.hidden_size, width, width, seed, dtype)
        return tensors, {
            "source": None,
            "init": f"uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch.nn.Linear, seed {seed}",
        }
    tensors, fmt, source = read_projector(path, fmt)
    check_pieces_fit(vision_config, text_config, tensors, source)
    return tensors, {"source": source, "format": fmt}


def check_state_dict(
    expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], origins: dict
) -> None:
    """Every model key supplied, no key left over, every shape right; else one error listing them all."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{key} from {origins.get(key, 'new')}: shape {list(state_dict[key].shape)}, the model expects {list(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model key(s) missing from the checkpoints: {', '.join(missing)}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unknown checkpoint key(s): "
            + ", ".join(f"{origins.get(k, k)} (-> {k})" for k in unexpected)
        )
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): " + "; ".join(wrong))
    if problems:
        raise ValueError("the checkpoints do not fit the tinyvlm model: " + " | ".join(problems))


def assemble_model(config, state_dict: dict[str, torch.Tensor], origins: dict):
    """A TinyVLMForConditionalGeneration holding exactly `state_dict` (assigned, not copied)."""
    try:  # skip random init: every parameter is replaced below
        from transformers.initialization import no_init_weights  # 5.x
    except ImportError:
        from transformers.modeling_utils import no_init_weights  # 4.x

    with no_init_weights():
        model = TinyVLMForConditionalGeneration(config)
    expected = model.state_dict()
    tied = LM_HEAD_KEY in expected and LM_HEAD_KEY not in state_dict and config.tie_word_embeddings
    if tied:  # a tied checkpoint stores the table once
        state_dict = {**state_dict, LM_HEAD_KEY: state_dict.get(EMBED_KEY)}
    check_state_dict(expected, state_dict, origins)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if tied:
        model.tie_weights()
    return model.eval()


def make_generation_config(folder: Path, tokenizer):
    """The LLM's generation config (if any) with the tokenizer's special ids."""
    from transformers import GenerationConfig

    gen = (
        GenerationConfig.from_pretrained(str(folder))
        if (folder / "generation_config.json").is_file()
        else GenerationConfig()
    )
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    return gen


# ---------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------


@dataclass
class BuildOptions:
    """`build_from_checkpoints` options; each is one CLI flag of `tinyvlm build` (see add_arguments)."""

    projector_format: str = "auto"
    projector_hidden_act: str = "gelu"
    vision_feature_layer: int = -2
    dtype: str = "auto"
    max_shard_size: str = "2GB"
    seed: int = 0
    revision: str | None = None
    overwrite: bool = False


def build_from_checkpoints(
    vision: str, llm: str, output: str, projector: str | None = None, **options
) -> Path:
    """SigLIP checkpoint + Llama checkpoint (+ projector file) -> a tinyvlm folder at `output`."""
    known = {f.name for f in fields(BuildOptions)}
    if set(options) - known:
        raise ValueError(f"unknown build option(s) {sorted(set(options) - known)}; known: {sorted(known)}")
    opts = BuildOptions(**options)
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not opts.overwrite:  # fail before the heavy work
        raise FileExistsError(f"{output} exists and is not empty (pass --overwrite to replace it)")
    vision_dir = resolve_checkpoint(vision, "vision", opts.revision)
    llm_dir = resolve_checkpoint(llm, "llm", opts.revision)
    vision_config, text_config = load_vision_config(vision_dir), load_text_config(llm_dir)
    tokenizer, base_size, added = load_tokenizer(llm_dir)
    image_processor = load_image_processor(vision_dir, vision_config)
    state_dict, origins, report = collect_state_dict(
        vision_dir, llm_dir, projector, vision_config, text_config, (base_size, len(tokenizer)), opts
    )

    text_config.vocab_size = report["embeddings"]["rows_after"]
    text_config.pad_token_id = tokenizer.pad_token_id
    config = TinyVLMConfig(
        vision_config=vision_config,
        text_config=text_config,
        projector_hidden_size=state_dict["multi_modal_projector.linear_1.weight"].shape[0],
        projector_hidden_act=opts.projector_hidden_act,
        vision_feature_layer=opts.vision_feature_layer,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    model = assemble_model(config, state_dict, origins)
    model.generation_config = make_generation_config(llm_dir, tokenizer)
    processor = TinyVLMProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=config.image_seq_length
    )
    report["vision"]["source"], report["llm"]["source"] = vision, llm
    report.update(added_tokens=added, options=asdict(opts))
    with atomic_dir(output, overwrite=opts.overwrite) as tmp:
        save_model_folder(model, processor, tmp, max_shard_size=opts.max_shard_size)
        (tmp / "build_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    logger.info("built %s from %s + %s", output, vision, llm)
    return output


def collect_state_dict(vision_dir, llm_dir, projector, vision_config, text_config, vocab, opts: BuildOptions):
    """({tinyvlm key: tensor} in the output dtype, {key: origin}, report) from the three sources.

    vocab: (tokenizer size before, after adding `<image>`/`<pad>`).
    """
    vision_sd, origins, vision_dropped = read_weights(vision_dir, plan_vision_keys, "vision")
    llm_sd, llm_origins, llm_dropped = read_weights(llm_dir, plan_llm_keys, "llm")
    origins.update(llm_origins)
    rows = grow_embeddings(llm_sd, vocab[1], vocab[0], str(llm_dir))
    state_dict = {**vision_sd, **llm_sd}
    proj, proj_report = projector_weights(
        projector,
        opts.projector_format,
        vision_config,
        text_config,
        opts.seed,
        resolve_dtype(opts.dtype, state_dict),
    )
    state_dict.update({"multi_modal_projector." + k: v for k, v in proj.items()})
    dtype = resolve_dtype(opts.dtype, state_dict)  # a projector file may widen it
    state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    report = {
        "vision": {
            "folder": str(vision_dir),
            "tensors": len(vision_sd),
            "dropped": _by_reason(vision_dropped),
        },
        "llm": {"folder": str(llm_dir), "tensors": len(llm_sd), "dropped": _by_reason(llm_dropped)},
        "projector": {**proj_report, "projector_hidden_size": proj["linear_1.weight"].shape[0]},
        "embeddings": rows,
        "dtype": str(dtype).removeprefix("torch."),
    }
    return state_dict, origins, report


def _by_reason(dropped: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, reason in dropped.items():
        grouped.setdefault(reason, []).append(key)
    return grouped


# ---------------------------------------------------------------------------------------------------
# Command line (`tinyvlm build` in conversion/build.py adds these flags and calls build_from_args)
# ---------------------------------------------------------------------------------------------------

EPILOG = """example:
  tinyvlm build --vision google/siglip-so400m-patch14-384 --llm TinyLlama/TinyLlama-1.1B-Chat-v1.0 \\
      --projector projector.safetensors --output tinyvlm-init/
  HF_HUB_OFFLINE=1 works once the two repos are in the Hugging Face cache; local folders are read in place.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoint flags of `tinyvlm build` (not --output/--overwrite, which build.py owns)."""
    from .port_projector import PROJECTOR_FORMATS

    flags = [
        ("--vision", {"help": "SigLIP checkpoint: Hub id or folder (SiglipModel or SiglipVisionModel)"}),
        ("--llm", {"help": "Llama checkpoint with its tokenizer: Hub id or folder"}),
        (
            "--projector",
            {"help": "projector file or folder (any port-projector format); default: fresh init"},
        ),
        ("--projector-format", {"default": "auto", "choices": ["auto", *PROJECTOR_FORMATS]}),
        ("--projector-hidden-act", {"default": "gelu", "help": "activation between the projector's linears"}),
        (
            "--vision-feature-layer",
            {"type": int, "default": -2, "help": "vision hidden state fed to the projector"},
        ),
        (
            "--dtype",
            {
                "default": "auto",
                "choices": ["auto", *DTYPES],
                "help": "auto: the sources' (widest if they differ)",
            },
        ),
        ("--max-shard-size", {"default": "2GB", "help": "safetensors shard size"}),
        ("--seed", {"type": int, "default": 0, "help": "seed of a freshly initialised projector"}),
        ("--revision", {"help": "Hub revision of --vision and --llm"}),
    ]
    for flag, kwargs in flags:
        # build.py may already define a shared flag (--seed, --dtype) for its presets; keep its definition.
        if flag not in parser._option_string_actions:
            parser.add_argument(flag, **kwargs)


def build_from_args(args: argparse.Namespace) -> Path:
    if not (args.vision and args.llm):
        raise ValueError("building from checkpoints needs both --vision and --llm")
    options = {f.name: getattr(args, f.name) for f in fields(BuildOptions) if hasattr(args, f.name)}
    return build_from_checkpoints(args.vision, args.llm, args.output, args.projector, **options)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tinyvlm build",
        description="Build a tinyvlm folder from a SigLIP checkpoint and a Llama checkpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_arguments(parser)
    output = build_from_args(parser.parse_args(argv))
    print(f"wrote {output}")
    return 0
