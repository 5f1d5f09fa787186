"""Typed config loading: nested dataclasses from YAML, `--set a.b=c` overrides, strict keys.

Generic over any dataclass tree, so each subsystem owns its config class
(``DataConfig`` in data/, ``CheckpointConfig`` in checkpoint.py, ...) and
``config.py`` only composes them.
"""

from __future__ import annotations

import dataclasses
import difflib
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


def _unknown_key_error(key: str, valid: Sequence[str], where: str) -> ConfigError:
    alias = KNOWN_ALIASES.get(key)
    close = [alias] if alias in valid else difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
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
    if float in allowed and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if int in allowed and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    scalar_kinds = [kind for kind in allowed if kind in (int, float, bool, str)]
    if scalar_kinds and not isinstance(value, tuple(scalar_kinds)) and len(scalar_kinds) == len(allowed):
        names = " or ".join(kind.__name__ for kind in scalar_kinds)
        raise ConfigError(f"config key '{where}' expects {names}, got {value!r}")
    return value


def from_dict(cls: type[T], values: Mapping[str, Any] | None, where: str = "") -> T:
    """Builds dataclass ``cls`` from a nested mapping, rejecting unknown keys.

    A class with a ``resolve_class(values) -> (class, values)`` classmethod picks
    the concrete class to build (and may drop keys) first: the run config picks
    the subclass that has the chosen algorithm's sections.
    """
    values = dict(values or {})
    resolve = getattr(cls, "resolve_class", None)
    if resolve is not None:
        cls, values = resolve(values)
    types_by_name = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key_error(key, names, where)
        nested = _dataclass_in(types_by_name[key])
        if nested is not None and isinstance(value, Mapping):
            value = from_dict(nested, value, f"{where}{key}.")
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
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as handle:
        loaded = yaml.safe_load(handle) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Reads YAML (optional), applies ``--set`` overrides, builds ``cls`` strictly."""
    tree = load_yaml(path) if path is not None else {}
    for assignment in overrides:
        apply_override(tree, assignment)
    return from_dict(cls, tree)
