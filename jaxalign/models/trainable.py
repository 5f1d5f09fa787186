"""The trainable subset of a model's parameters.

``model.trainable`` and ``model.freeze`` are lists of regular expressions, each
matched in full (``re.fullmatch``) against a parameter's path: its keys in the
parameter tree joined by ``/``, e.g. ``model/embed_tokens/embedding``,
``model/layers/3/self_attn/q_proj/kernel``, ``score/kernel``. A parameter is
trained when it matches some ``trainable`` pattern (all do when ``trainable``
is unset) and no ``freeze`` pattern.

``partition`` splits a parameter tree into the trained part (the train state:
optimizer, gradients and checkpoints hold only it) and the frozen part (an
input of the step, beside reference models: never donated, never saved, rebuilt
from the model's source on resume); ``combine`` puts them back together for the
forward and for export. Adapters (LoRA) fit the same seam: their parameters
are the ``trainable`` ones and the base model is frozen.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

Params = dict[Any, Any]


def compile_patterns(patterns: Sequence[str] | None, field: str) -> list[re.Pattern]:
    """The patterns compiled; a bad one is a ``ValueError`` naming ``field``."""
    if patterns is None:
        return []
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{field} must be a list of regular expressions over parameter paths, got {patterns!r}")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise ValueError(f"{field}: '{pattern}' is not a regular expression: {err}") from None
    return compiled


def leaf_paths(params: Params, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, leaf)`` of every leaf of a nested dict, paths joined by ``/``."""
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from leaf_paths(value, path + "/")
        else:
            yield path, value


def is_trained(path: str, trainable: Sequence[re.Pattern], freeze: Sequence[re.Pattern]) -> bool:
    wanted = not trainable or any(p.fullmatch(path) for p in trainable)
    return wanted and not any(p.fullmatch(path) for p in freeze)


def partition(params: Params, trainable: Sequence[str] | None, freeze: Sequence[str] | None,
              where: str = "model") -> tuple[Params, Params]:
    """``(trained, frozen)``: two nested dicts with the same keys as ``params``, each
    holding only its leaves (empty sub-dicts dropped). Raises ``ValueError`` when a
    pattern matches no parameter or nothing is left to train."""
    trainable_res = compile_patterns(trainable, f"{where}.trainable")
    freeze_res = compile_patterns(freeze, f"{where}.freeze")
    paths = [path for path, _ in leaf_paths(params)]
    for field, patterns in (("trainable", trainable_res), ("freeze", freeze_res)):
        for pattern in patterns:
            if not any(pattern.fullmatch(path) for path in paths):
                examples = ", ".join(paths[:3])
                raise ValueError(f"{where}.{field}: '{pattern.pattern}' matches no parameter (each pattern must match "
                                 f"a whole path; paths look like {examples})")
    if not trainable_res and not freeze_res:
        return params, {}
    trained, frozen = _split(params, "", trainable_res, freeze_res)
    if not trained:
        raise ValueError(f"{where}.trainable/{where}.freeze leave no parameter to train")
    return trained, frozen


def _split(params: Params, prefix: str, trainable, freeze) -> tuple[Params, Params]:
    trained, frozen = {}, {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            sub_trained, sub_frozen = _split(value, path + "/", trainable, freeze)
            if sub_trained:
                trained[key] = sub_trained
            if sub_frozen:
                frozen[key] = sub_frozen
        elif is_trained(path, trainable, freeze):
            trained[key] = value
        else:
            frozen[key] = value
    return trained, frozen


def combine(trained: Params, frozen: Params) -> Params:
    """The whole parameter tree again (``partition``'s inverse)."""
    if not frozen:
        return trained
    merged = dict(trained)
    for key, value in frozen.items():
        if key in merged:
            if not (isinstance(value, dict) and isinstance(merged[key], dict)):
                raise ValueError(f"parameter '{key}' is both trained and frozen")
            merged[key] = combine(merged[key], value)
        else:
            merged[key] = value
    return merged
