"""A reward-model ensemble as one reward source (kind ``ensemble``): k frozen reward models
score every reply; the source's score is their mean or their minimum (Coste et al. 2023:
worst-case and mean ensembles resist over-optimisation better than one model). Their
disagreement (the per-reply standard deviation over members, averaged over the rows) is
logged as ``rewards/NAME/disagreement``: it rises when the policy finds replies the members
judge differently, a sign of exploiting one model's errors.

    rewards:
      - {ensemble: min, members: [runs/rm-a/export, runs/rm-b/export, runs/rm-c/export]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxalign.rl.reward_model import ModelSource, RewardModelError
from jaxalign.rl.sources import RewardSpec, ScoringInputs, SourceContext, register_reward_source

REDUCTIONS = {"mean": np.mean, "min": np.min}


class EnsembleSource:
    def __init__(self, members: list[Any], reduce: str, name: str):
        self.members, self.reduce, self.name = members, reduce, name
        self.last_metrics: dict[str, float] = {}

    def score(self, inputs: ScoringInputs) -> tuple[np.ndarray, np.ndarray]:
        per_member = np.stack([member.score(inputs)[0] for member in self.members], axis=1)  # [K, k]
        spread = per_member.std(axis=1, ddof=1) if per_member.shape[1] > 1 else np.zeros(len(per_member))
        self.last_metrics = {"disagreement": float(spread.mean()) if spread.size else float("nan")}
        scores = REDUCTIONS[self.reduce](per_member, axis=1).astype(np.float32)
        return scores, np.ones(len(scores), bool)


@register_reward_source("ensemble")
def _ensemble_source(spec: RewardSpec, context: SourceContext) -> EnsembleSource:
    where = f"reward source ensemble '{spec.name or spec.target}'"
    if spec.target not in REDUCTIONS:
        raise ValueError(f"{where}: reduce by one of {', '.join(REDUCTIONS)} ({{ensemble: min, members: [...]}}), "
                         f"got {spec.target!r}")
    extra = sorted(set(spec.options) - {"members"})
    members = spec.options.get("members")
    if extra or not isinstance(members, (list, tuple)) or len(members) < 2:
        raise ValueError(f"{where}: give 'members', a list of at least 2 reward-model folders"
                         + (f"; unknown options {extra}" if extra else ""))
    sources = []
    for index, folder in enumerate(members):
        if not Path(str(folder)).is_dir():
            raise RewardModelError(f"{where}: member {folder}: no such folder")
        try:
            sources.append(ModelSource(str(folder), f"member_{index}", context))
        except (OSError, FileNotFoundError) as err:
            raise RewardModelError(f"{where}: member {folder}: {err}") from None
    return EnsembleSource(sources, spec.target, spec.name or f"ensemble_{spec.target}")
