"""Reward shaping against reward hacking: what is done to the weighted reward before an
algorithm trains on it. Options (all off by default), applied in this order:

- ``length_normalize``: reward / reply tokens (a long reply earns no more by being long);
- ``length_penalty``: reward - length_penalty x reply tokens;
- ``clip``: the reward clipped to [-clip, clip] (an outlier score from an over-optimised
  reward model cannot dominate an update).

Gold-role sources are never shaped (they measure; they are not trained on). The other
mitigations are elsewhere: reward-model ensembles are a source kind (``ensemble``,
``jaxalign.rl.ensemble``), a KL target is PPO's adaptive controller (``ppo.target_kl``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class RewardShaping:
    length_penalty: float = 0.0
    length_normalize: bool = False
    clip: float | None = None

    def __post_init__(self) -> None:
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"reward_shaping.clip must be > 0 or null, got {self.clip}")
        if self.length_penalty < 0:
            raise ValueError(f"reward_shaping.length_penalty must be >= 0, got {self.length_penalty}")

    @classmethod
    def of(cls, value: "RewardShaping | Mapping[str, Any] | None", where: str = "reward_shaping") -> "RewardShaping":
        if value is None:
            return cls()
        if isinstance(value, RewardShaping):
            return value
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; keys: {', '.join(sorted(fields))}")
        try:
            return cls(**value)
        except ValueError as err:
            raise ValueError(str(err).replace("reward_shaping", where)) from None

    @property
    def active(self) -> bool:
        return self.length_normalize or self.length_penalty != 0 or self.clip is not None

    def apply(self, rewards: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """(shaped rewards ``[K]``, metrics) for rewards ``[K]`` of replies of ``lengths`` ``[K]`` tokens.
        Metrics: ``rewards/unshaped`` (mean before shaping) and, with ``clip``, ``rewards/clipped_ratio``."""
        rewards = np.asarray(rewards, np.float32)
        if not self.active:
            return rewards, {}
        out = rewards.copy()
        lengths = np.asarray(lengths, np.float32)
        if self.length_normalize:
            out = out / np.maximum(lengths, 1.0)
        out = out - np.float32(self.length_penalty) * lengths
        metrics = {"rewards/unshaped": float(np.mean(rewards)) if rewards.size else float("nan")}
        if self.clip is not None:
            clipped = np.clip(out, -self.clip, self.clip)
            metrics["rewards/clipped_ratio"] = float(np.mean(clipped != out)) if out.size else 0.0
            out = clipped
        return out.astype(np.float32), metrics
