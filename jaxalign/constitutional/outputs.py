"""Outputs written as they are made, resumable after a kill with no duplicate and no lost row.

Rows go out one batch of prompts at a time: every file is appended and fsynced, then
``progress.json`` (prompts done, each file's size, the running totals) is replaced
atomically. A run killed anywhere leaves files at most one batch longer than the
progress says; a resumed run cuts them back to the recorded sizes and redoes that batch
(batches are seeded by their index, so it is sampled the same way). ``run.json`` holds
the fingerprint of what made the rows (settings, constitution text, model, prompts);
a resume with a different fingerprint is refused rather than mixing two runs' rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

PROGRESS = "progress.json"
RUN = "run.json"
HEAD_BYTES = 1 << 20


class OutputsMismatch(ValueError):
    """An output folder holding rows of a run with a different config."""


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def text_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()


def model_identity(folder: str | Path) -> str:
    """config.json, and each weight file's name, size, first and last MiB: cheap for an 8B model,
    and any retraining changes at least the first tensors' bytes."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json" or path.suffix in (".safetensors", ".bin"):
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}".encode())
            with path.open("rb") as handle:
                digest.update(handle.read(HEAD_BYTES))
                handle.seek(max(size - HEAD_BYTES, 0))
                digest.update(handle.read(HEAD_BYTES))
    return digest.hexdigest()


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], where: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changes.extend(_differences(before, after, f"{where}{key}."))
        elif before != after:
            shown = (f"{before!r} -> {after!r}" if len(repr(before)) + len(repr(after)) < 80
                     else "contents differ")
            changes.append(f"{where}{key} ({shown})")
    return changes


def _write_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w") as handle:
        json.dump(payload, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class ResumableOutputs:
    """The output folder: ``files`` (JSON lines) plus ``run.json`` and ``progress.json``.

    ``prompts_done`` and ``totals`` say where a previous run stopped (0 and {} when fresh);
    ``dropped_rows`` counts the rows of an unfinished batch that opening cut off.
    """

    def __init__(self, out_dir: str | Path, files: Sequence[str], fingerprint: Mapping[str, Any]):
        self.dir = Path(out_dir)
        self.files = tuple(files)
        self.dir.mkdir(parents=True, exist_ok=True)
        run_path, progress_path = self.dir / RUN, self.dir / PROGRESS
        present = [name for name in self.files if (self.dir / name).exists()]
        if run_path.exists():
            recorded = json.loads(run_path.read_text())
            changes = _differences(recorded, dict(fingerprint))
            if changes:
                raise OutputsMismatch(
                    f"{self.dir} holds outputs of a run with a different config; refusing to mix them. Changed: "
                    f"{'; '.join(changes)}. Use another out_dir, or delete {self.dir} to start over")
        elif present:
            raise OutputsMismatch(f"{self.dir} holds {', '.join(present)} but no {RUN}: not outputs of this "
                                  "command (or from an older version); use another out_dir")
        else:
            _write_atomically(run_path, dict(fingerprint))
        progress = json.loads(progress_path.read_text()) if progress_path.exists() else {}
        self.prompts_done: int = progress.get("prompts_done", 0)
        self.totals: dict[str, Any] = progress.get("totals", {})
        sizes = progress.get("sizes", {})
        self.dropped_rows = 0
        for name in self.files:
            path = self.dir / name
            size = sizes.get(name, 0)
            if path.exists() and path.stat().st_size > size:  # an unfinished batch of a killed run
                with path.open("rb") as handle:
                    handle.seek(size)
                    self.dropped_rows += handle.read().count(b"\n")
                os.truncate(path, size)
            elif not path.exists():
                if size:
                    raise OutputsMismatch(f"{path} is missing but {progress_path} says it held {size} bytes; "
                                          f"delete {self.dir} to start over")
                path.touch()

    def commit(self, rows: Mapping[str, Sequence[Mapping[str, Any]]], prompts_done: int,
               totals: Mapping[str, Any]) -> None:
        """Appends each file's rows, makes them durable, then records the new progress."""
        for name in self.files:
            with (self.dir / name).open("a") as handle:
                for row in rows.get(name, ()):
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        self.prompts_done, self.totals = prompts_done, dict(totals)
        sizes = {name: (self.dir / name).stat().st_size for name in self.files}
        _write_atomically(self.dir / PROGRESS, {"prompts_done": prompts_done, "sizes": sizes, "totals": self.totals})
