"""Is a checkpoint folder whole? Cheap checks before any array is read.

``Checkpointer.verify`` runs these on ``<dir>/<step>``: the train state's
metadata and array index present and readable, the data position and saved
config readable. The arrays' bytes are only checked by reading them (a
restore). ``shape_differences`` compares the saved state's shapes with the
configured model's, so a changed architecture is named, not restored.
"""

from __future__ import annotations

import json
from typing import Any

import jax
from etils import epath


def json_problem(path: epath.Path, what: str) -> str | None:
    """Why ``path`` is not a readable JSON file, or None."""
    if not path.exists():
        return f"{what} ({path.name}) is missing"
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return f"{what} ({path.name}) is unreadable: {err}"
    return None


def state_problems(state_dir: epath.Path) -> list[str]:
    """What is wrong with an Orbax ``StandardSave`` folder's metadata and array index."""
    if not state_dir.is_dir():
        return ["its train state (state/) is missing"]
    problem = json_problem(state_dir / "_METADATA", "the train state's metadata")
    if problem:
        return [problem]
    metadata = json.loads((state_dir / "_METADATA").read_text())
    if not isinstance(metadata, dict) or "tree_metadata" not in metadata:
        return ["the train state's metadata (_METADATA) lists no arrays"]
    if metadata.get("use_ocdbt"):
        manifests = [state_dir / "manifest.ocdbt", *(d / "manifest.ocdbt" for d in state_dir.glob("ocdbt.process_*"))]
        missing = [str(m.relative_to(state_dir)) for m in manifests if not m.exists()]
        if missing:
            return [f"the train state's array index is missing ({', '.join(missing)})"]
    return []


def data_problems(data_dir: epath.Path, expected: epath.Path) -> list[str]:
    """Damage of this process's data position ``expected``; files written by
    another process count are not damage (the restore explains that case)."""
    if expected.exists():
        problem = json_problem(expected, "its data-iterator state")
        return [problem] if problem else []
    if data_dir.is_dir() and any(data_dir.glob("process_*-of-*.json")):
        return []
    return [f"its data-iterator state (data/{expected.name}) is missing, so its position in the data is lost"]


def _path_text(path: tuple) -> str:
    names = []
    for key in path:
        for attribute in ("name", "key", "idx"):
            if hasattr(key, attribute):
                names.append(str(getattr(key, attribute)))
                break
        else:
            names.append(str(key))
    return "/".join(names)


def shape_differences(saved: Any, abstract: Any) -> list[str]:
    """``path: saved (a, b), now (c, d)`` for every array whose shape differs between
    two pytrees of shaped leaves, plus arrays only one of them has."""
    def stored_shape(leaf: Any) -> tuple:
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)  # keys are stored as their data
        return tuple(leaf.shape)

    def shapes(tree: Any) -> dict[str, tuple]:
        return {_path_text(path): stored_shape(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
                if hasattr(leaf, "shape")}

    before, now = shapes(saved), shapes(abstract)
    differences = [f"{name}: saved {before[name]}, now {now[name]}" for name in sorted(before.keys() & now.keys())
                   if before[name] != now[name]]
    differences += [f"{name}: only in the checkpoint" for name in sorted(before.keys() - now.keys())]
    differences += [f"{name}: not in the checkpoint" for name in sorted(now.keys() - before.keys())]
    return differences
