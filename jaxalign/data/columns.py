"""Per-example columns that reach the losses, read from each row and checked.

One mechanism for every number a row carries to its loss: the formats read
them (``row_columns``) into ``TextExample.columns``, tokenizing keeps them,
and the packer writes each as a float32 batch column ``[R, K]`` (0 in empty
slots). The losses read them with ``example_column``:

* ``weight`` (``data.weight_column``; also set by ``data.annotators.weight_by``):
  every preference and reward-model loss is the weighted mean
  ``sum(w * loss) / sum(w)`` over real examples (``losses.build``).
* ``preference_strength`` (``data.strength_column``): P(chosen is better) in
  [0, 1] per pair; soft labels for ``bradley_terry`` and label smoothing
  ``1 - p`` for ``sigmoid``, ``simpo`` and ``cpo``.
* ``rating`` / ``rating_level``: a rated reply's rating normalised to [-1, 1]
  and its level index 0..K-1 (pointwise reward models; ``data.ratings``).
"""

from __future__ import annotations

import math
from typing import Any

from jaxalign.data.errors import DataError

WEIGHT = "weight"
STRENGTH = "preference_strength"
RATING = "rating"
RATING_LEVEL = "rating_level"
EXAMPLE_COLUMNS = (WEIGHT, STRENGTH, RATING, RATING_LEVEL)
# Kinds whose losses read a weight (SFT's token-mean loss does not).
WEIGHTED_KINDS = ("preference", "reward", "unpaired", "pointwise", "listwise")
PAIR_KINDS = ("preference", "reward")


def number(where: str, field: str, value: Any, what: str) -> float:
    """``value`` as a finite float, or a ``DataError`` naming the field."""
    if value is None:
        raise DataError(where, "missing_field", "missing", field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(where, "wrong_type", f"expected {what}, got {type(value).__name__} {value!r:.40}", field)
    if not math.isfinite(value):
        raise DataError(where, "not_finite", f"expected {what}, got {value}", field)
    return float(value)


def row_columns(where: str, row: dict, cfg: Any, kind: str) -> dict[str, float]:
    """The configured columns of one row (``cfg`` a ``DataConfig`` or None)."""
    columns: dict[str, float] = {}
    if cfg is None:
        return columns
    if cfg.weight_column and kind in WEIGHTED_KINDS:
        weight = number(where, cfg.weight_column, row.get(cfg.weight_column), "a weight")
        if weight < 0:
            raise DataError(where, "bad_weight", f"a weight must be >= 0, got {weight:g}", cfg.weight_column)
        columns[WEIGHT] = weight
    if cfg.strength_column and kind in PAIR_KINDS:
        strength = number(where, cfg.strength_column, row.get(cfg.strength_column), "a preference strength")
        if not 0.0 <= strength <= 1.0:
            raise DataError(where, "bad_strength",
                            f"a preference strength is P(chosen is better), in [0, 1]; got {strength:g}",
                            cfg.strength_column)
        columns[STRENGTH] = strength
    return columns


def row_annotator(where: str, row: dict, cfg: Any) -> str | None:
    """The row's annotator id (a string or integer column), or None without one."""
    if cfg is None:
        return None
    value = row.get(cfg.annotators.column)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(where, "wrong_type", f"an annotator id must be a string or an integer, got {value!r:.40}",
                        cfg.annotators.column)
    return str(value)


def check_rating(where: str, field: str, value: Any, scale: list[float] | None) -> float:
    """A rating as a float inside the declared ``data.rating_scale``."""
    rating = number(where, field, value, "a rating")
    if scale is not None and not scale[0] <= rating <= scale[1]:
        raise DataError(where, "rating_out_of_scale",
                        f"rating {rating:g} is outside the declared data.rating_scale [{scale[0]:g}, {scale[1]:g}]",
                        field)
    return rating
