"""Typed config loading: nested dataclasses from YAML, `--set a.b=c` overrides, strict keys.

Generic over any dataclass tree, so each subsystem owns its config class
(``DataConfig`` in data/, ``CheckpointConfig`` in checkpoint.py, ...) and
``config.py`` only composes them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not match the config's schema."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# Names users bring from transformers/TRL configs, mapped to ours.
KNOWN_ALIASES = {
    "learning_rate": "lr",
    "lr_scheduler_type": "schedule",
    "gradient_accumulation_steps": "grad_accum_steps",
    "max_grad_norm": "max_grad_norm",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "output_dir": "run_dir",
    "save_steps": "every_steps",
    "logging_steps": "every_steps",
    "eval_steps": "eval_every",
    "loss_type": "name",
}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions of one character."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key of a dataclass tree as ``a.b.c`` (sections and leaves)."""
    keys = []
    for name, annotation in _field_types(cls).items():
        if name not in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            continue
        keys.append(prefix + name)
        nested = _dataclass_in(annotation)
        if nested is not None:
            keys += dotted_keys(nested, f"{prefix}{name}.")
    return keys


def suggest_key(dotted: str, root: type) -> str | None:
    """The valid key nearest to ``dotted`` by edit distance on the whole dotted
    key, or on its last part in another section (``lr`` -> ``optim.lr``);
    TRL/transformers names (``optim.learning_rate``) count as their key."""
    candidates: dict[str, str] = {}  # spelling -> the key it stands for
    for key in dotted_keys(root):
        candidates[key] = key
        section, _, leaf = key.rpartition(".")
        for alias, target in KNOWN_ALIASES.items():
            if target == leaf and alias != leaf:
                candidates.setdefault(f"{section}.{alias}" if section else alias, key)
    leaf = dotted.rpartition(".")[2]

    def score(spelling: str) -> int:
        return min(edit_distance(dotted, spelling), edit_distance(leaf, spelling.rpartition(".")[2]) + 1)

    best = min(candidates, key=lambda spelling: (score(spelling), spelling))
    return candidates[best] if score(best) <= max(2, len(leaf) // 3) else None


def _unknown_key_error(key: str, valid: Sequence[str], where: str, root: type | None = None) -> ConfigError:
    nearest = suggest_key(f"{where}{key}", root) if root is not None else None
    hint = f" Did you mean '{nearest}'?" if nearest else ""
    return ConfigError(f"unknown config key '{where}{key}'.{hint} Valid keys here: {', '.join(sorted(valid))}")


def _dataclass_in(annotation: Any) -> type | None:
    """The dataclass inside ``X``, ``X | None`` or ``Optional[X]``, if any."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Numbers YAML 1.1 reads as strings (``5e-7``) become the field's type;
    a value of the wrong kind is an error naming the key."""
    allowed = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    if value is None or any(kind is Any for kind in allowed):
        return value
    if float in allowed and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            pass
        else:  # YAML reads .nan and .inf as floats; no setting means either
            if not math.isfinite(number):
                raise ConfigError(f"config key '{where}' must be a finite number, got {value!r}")
            return number
    if int in allowed and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    scalar_kinds = [kind for kind in allowed if kind in (int, float, bool, str)]
    not_none = [kind for kind in allowed if kind is not type(None)]  # None itself returned above
    if scalar_kinds and not isinstance(value, tuple(scalar_kinds)) and len(scalar_kinds) == len(not_none):
        names = " or ".join(kind.__name__ for kind in scalar_kinds)
        raise ConfigError(f"config key '{where}' expects {names}, got {value!r}")
    return value


def from_dict(cls: type[T], values: Mapping[str, Any] | None, where: str = "", root: type | None = None) -> T:
    """Builds dataclass ``cls`` from a nested mapping, rejecting unknown keys
    (suggesting the nearest key of ``root``'s whole tree, default ``cls``).

    A class with a ``resolve_class(values) -> (class, values)`` classmethod picks
    the concrete class to build (and may drop keys) first: the run config picks
    the subclass that has the chosen algorithm's sections.
    """
    values = dict(values or {})
    resolve = getattr(cls, "resolve_class", None)
    if resolve is not None:
        cls, values = resolve(values)
    root = root or cls
    types_by_name = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key_error(key, names, where, root)
        nested = _dataclass_in(types_by_name[key])
        if nested is not None and isinstance(value, Mapping):
            value = from_dict(nested, value, f"{where}{key}.", root)
        else:
            value = _coerce(value, types_by_name[key], f"{where}{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # e.g. a required field left out
        raise ConfigError(f"config section '{where.rstrip('.') or cls.__name__}': {err}") from err


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Applies one ``a.b.c=value`` to a nested dict; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {dotted}: the value is not valid YAML ({_yaml_problem(err)})") from err


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open() as handle:
            loaded = yaml.safe_load(handle) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file ({err.reason} at byte {err.start})") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded


def _yaml_problem(err: yaml.YAMLError) -> str:
    """``line L, column C: problem`` from a PyYAML error (1-based, as editors count)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = " ".join(part for part in (getattr(err, "context", None), getattr(err, "problem", None)) if part)
    problem = problem or str(err).splitlines()[0]
    if "python/" in problem or "constructor" in type(err).__name__.lower():
        problem += " (plain values only: python tags and other YAML constructors are not allowed)"
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Reads YAML (optional), applies ``--set`` overrides, builds ``cls`` strictly."""
    tree = load_yaml(path) if path is not None else {}
    for assignment in overrides:
        apply_override(tree, assignment)
    return from_dict(cls, tree)
