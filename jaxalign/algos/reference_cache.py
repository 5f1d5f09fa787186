"""Precomputed reference log-probs on disk, keyed by what determines them.

A table of reference log-prob sums is only right for the reference model,
tokenizer, examples and tokenization it was computed with. Next to each
``ref_logps_<split>.npy`` goes ``ref_logps_<split>.json`` with a fingerprint
of all of them; a table whose fingerprint differs from the current run's is
recomputed, and the log says which parts changed.

What the fingerprint holds (all readable, large parts as SHA-256 digests):

- the reference model: for a folder, its absolute path, a digest of
  ``config.json`` and the name, size and modification time of every weight
  file (hashing gigabytes of weights on every start would cost minutes); for
  a model built from ``model.config``, that config and its seed; both with
  their dtypes;
- the tokenizer: a digest of its full serialisation, chat template and special ids;
- the examples: a digest of every formatted example of the split (prompt,
  completions, margins, labels), which covers the data files, their format,
  the split and ``eval_fraction``;
- tokenization and packing: ``max_length``, the resolved ``max_prompt_length``,
  ``on_overlong``, ``packing``, ``pack_length``, ``pad_to_multiple``,
  ``sparse_attention`` (packing changes summation order, so rounding).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxalign.hub import model_folder_digest
from jaxalign.metrics_log import get_logger

log = get_logger()

FINGERPRINT_VERSION = 1


def _digest(payload: Any) -> str:
    text = payload if isinstance(payload, (bytes, str)) else json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:24]


def _model_parts(spec: Any) -> dict[str, Any]:
    parts: dict[str, Any] = {"reference.dtype": spec.dtype, "reference.param_dtype": spec.param_dtype}
    if spec.path is None:
        parts.update({"reference.source": "model config", "reference.config": _digest(spec.config),
                      "reference.seed": spec.seed})
        return parts
    folder = Path(spec.path).resolve()
    config_path = folder / "config.json"
    parts.update({"reference.source": f"folder {folder}",
                  "reference.config": _digest(config_path.read_bytes()) if config_path.exists() else None,
                  "reference.files": model_folder_digest(folder)})
    return parts


def _tokenizer_digest(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    serialised = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    extras = [type(tokenizer).__name__, getattr(tokenizer, "chat_template", None),
              tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    return _digest(serialised + json.dumps(extras, default=str))


def _examples_digest(examples: list) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(repr((example.prompt, example.completions, example.margin, example.label, example.chat)).encode())
    return f"{len(examples)} examples, sha256 {digest.hexdigest()[:24]}"


def fingerprint(cfg: Any, tokenizer: Any, pipeline: Any, split: str) -> dict[str, Any]:
    """Everything that determines split ``split``'s reference log-probs, as a flat dict."""
    spec = cfg.ref_model if cfg.ref_model is not None else cfg.model
    data = cfg.data
    paired = pipeline.kind in ("preference", "reward")
    return {
        "version": FINGERPRINT_VERSION,
        **_model_parts(spec),
        "tokenizer": _tokenizer_digest(tokenizer),
        "data.split": split,
        "data.kind": pipeline.kind,
        "data.examples": _examples_digest(pipeline.examples),
        "data.max_length": data.max_length,
        "data.max_prompt_length": data.resolved_max_prompt_length(),
        "data.on_overlong": data.on_overlong,
        "data.packing": data.packing,
        "data.pack_length": data.resolved_pack_length(paired),
        "data.pad_to_multiple": data.pad_to_multiple,
        "data.sparse_attention": data.sparse_attention,
    }


def _fingerprint_path(table_path: Path) -> Path:
    return table_path.with_suffix(".json")


def load(table_path: Path, expected: dict[str, Any], rows: int) -> tuple[np.ndarray | None, str]:
    """The cached table if it was made for ``expected``: ``(table, "")``, or
    ``(None, why it cannot be used)``."""
    if not table_path.exists():
        return None, "no cached table"
    fingerprint_path = _fingerprint_path(table_path)
    try:
        saved = json.loads(fingerprint_path.read_text())
    except FileNotFoundError:
        return None, f"{table_path.name} has no fingerprint ({fingerprint_path.name}), so what it was computed from is unknown"
    except (OSError, ValueError) as err:
        return None, f"its fingerprint {fingerprint_path.name} is unreadable ({err})"
    changed = sorted(key for key in set(saved) | set(expected) if saved.get(key) != expected.get(key))
    if changed:
        return None, "it was computed with a different " + ", ".join(changed)
    table = np.load(table_path)
    if table.shape != (rows, 2):
        return None, f"its shape {table.shape} is not ({rows}, 2)"
    return table, ""


def save(table_path: Path, table: np.ndarray, fingerprint_value: dict[str, Any]) -> None:
    """Writes the table, then its fingerprint (each via a temporary file and a rename,
    so an interrupted write never leaves a table that looks valid)."""
    table_path.parent.mkdir(parents=True, exist_ok=True)
    fingerprint_path = _fingerprint_path(table_path)
    fingerprint_path.unlink(missing_ok=True)  # no fingerprint until the new table is whole
    partial = table_path.with_name(table_path.name + ".partial")
    with open(partial, "wb") as handle:
        np.save(handle, table)
    os.replace(partial, table_path)
    partial = fingerprint_path.with_name(fingerprint_path.name + ".partial")
    partial.write_text(json.dumps(fingerprint_value, indent=1, sort_keys=True, default=str))
    os.replace(partial, fingerprint_path)
