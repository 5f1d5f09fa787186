"""What the data layer does with feedback after formatting, before tokenizing:
normalise ratings (``ratings``) and act on annotator quality (``annotators``)."""

from __future__ import annotations

from typing import Any

from jaxalign.data import annotators, ratings
from jaxalign.data.example import TextExample


def prepare(examples: list[TextExample], cfg: Any, kind: str, split: str) -> list[TextExample]:
    """``cfg`` a ``DataConfig``. Annotator weighting and exclusion apply to the
    train split only: eval metrics measure the eval data as it was labelled."""
    if kind == "pointwise":
        examples = ratings.normalise(examples, cfg.rating_scale, cfg.rating_normalization)
    if split == "train" and cfg.annotators.active and kind != "sft" and kind != "prompt":
        examples, _ = annotators.apply_reliability(
            examples, cfg.annotators.weight_by, cfg.annotators.min_agreement, cfg.annotators.column, split)
    return examples
