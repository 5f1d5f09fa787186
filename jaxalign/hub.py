"""Local folders and Hugging Face hub names: telling them apart, and what to say when neither works.

jaxalign loads models from local Hugging Face folders only (safetensors read
tensor by tensor onto their shardings); tokenizers may also come from the hub
when it is reachable. A name that looks like a path is never sent to the hub:
``/no/such/dir`` is a missing folder, not a malformed repository id.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

DOWNLOAD_HINT = ("download it once where the hub is reachable (huggingface-cli download {name} --local-dir DIR, "
                 "or snapshot_download in Python), then point {what} at DIR")


def looks_like_path(name: str) -> bool:
    """Absolute, relative (``./x``, ``../x``, ``~/x``), with a backslash or more
    than one ``/``: a path. ``org/model`` and ``model`` could be hub ids."""
    text = str(name)
    return (os.path.isabs(text) or text.startswith((".", "~")) or "\\" in text
            or text.count("/") > 1 or text.endswith("/"))


def missing_folder_error(name: str | os.PathLike, what: str) -> FileNotFoundError:
    """For a local name that is not an existing folder."""
    path = Path(name).expanduser()
    if path.exists():
        return FileNotFoundError(f"{what} {path} is a file, not a folder: expected a Hugging Face model folder "
                                 "(config.json, *.safetensors, tokenizer files)")
    if looks_like_path(str(name)):
        return FileNotFoundError(f"{what}: no such folder: {path}")
    return FileNotFoundError(
        f"{what} '{name}' is not a local folder, and jaxalign loads models from local folders only: "
        + DOWNLOAD_HINT.format(name=name, what=what))


def hub_unavailable_error(name: str, error: Exception, what: str) -> ValueError:
    """For a hub id the hub could not provide (offline, unreachable, unknown or gated)."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(f"{what} '{name}' is not a local folder, and the Hugging Face hub could not provide it "
                      f"(unreachable, or an unknown or gated id: {reason[:200]}); "
                      + DOWNLOAD_HINT.format(name=name, what=what))


MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".bin")  # config, weights, tokenizer


def model_folder_digest(folder: str | os.PathLike) -> str:
    """A model folder as it is now: a digest of its config, weight and tokenizer files' names,
    sizes and modification times ("missing" when it is gone). Sizes and times, not contents:
    hashing gigabytes of weights on every check would cost minutes, and saving or exporting a
    model rewrites its files. The DPO reference cache and eval results both record it."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        return "missing"
    files = []
    for path in root.iterdir():
        try:
            if path.is_file() and path.name.endswith(MODEL_FILE_SUFFIXES):
                stat = path.stat()
                files.append((path.name, stat.st_size, stat.st_mtime_ns))
        except OSError:  # removed while listed: the folder is changing, any value differs
            continue
    return hashlib.sha256(json.dumps(sorted(files)).encode()).hexdigest()[:24]
