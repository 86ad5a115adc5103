"""Small I/O helpers shared by the conversion and training commands: atomic outputs, folder saving."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temp folder beside `path`; on success it is renamed to `path`, on error removed.

    A failed conversion therefore leaves nothing half-written. With `overwrite`, an existing `path` is
    replaced only after the new content is complete.
    """
    path = Path(path).resolve()
    if path.exists() and not overwrite and any(path.iterdir()):
        raise FileExistsError(f"{path} exists and is not empty (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def save_model_folder(model, processor, folder: str | os.PathLike, max_shard_size: str = "2GB") -> None:
    """Weights (sharded safetensors), config, generation config, code files, processor, tokenizer."""
    model.save_pretrained(folder, max_shard_size=max_shard_size, safe_serialization=True)
    processor.save_pretrained(folder)
    logger.info("wrote %s", folder)
