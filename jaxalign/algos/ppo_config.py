"""``PPOConfig``: the ``ppo:`` section of a run config (``algo: ppo``).

Option names follow TRL's ``PPOConfig`` where TRL has one (``num_ppo_epochs``,
``num_mini_batches``, ``cliprange``, ``cliprange_value``, ``vf_coef``,
``gamma``, ``lam``, ``whiten_rewards``, ``kl_coef``, ``kl_estimator``,
``missing_eos_penalty``, ``temperature``); the adaptive controller takes
``target_kl`` and ``kl_horizon`` (Ziegler et al. 2019's target and horizon).
"""

from __future__ import annotations

import dataclasses
from typing import Any

KL_ESTIMATORS = ("k1", "k3")
FROZEN_DTYPES = ("float32", "bfloat16")
VALUE_ON_POLICY = "policy"  # value_model: a value head on the policy's own decoder


@dataclasses.dataclass
class PPOConfig:
    """PPO (RLHF) settings. One trainer step = one rollout of ``data.batch_size``
    prompts followed by ``num_ppo_epochs`` x ``num_mini_batches`` optimizer updates.

    Reward: exactly one of ``reward_model`` (a Hugging Face
    ``*ForSequenceClassification`` folder, e.g. the ``export/`` of an ``algo: rm``
    run), ``reward_function`` (``package.module:function`` or
    ``path/to/file.py:function``; see docs/ppo.md), or ``rewards``: a list of
    weighted reward sources (functions, reward models, verifiers; see docs/rl.md).

    Value model: ``value_model`` is a folder to start it from, or ``"policy"``
    for a scalar head on the policy's decoder (one model, trained by both
    losses). Default: the reward model's folder when there is one, else ``"policy"``.
    """

    # Rollout (sampling) settings.
    max_new_tokens: int = 53  # TRL's response_length
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    generation_slots: int = 0  # rows sampled at once (continuous batching); 0 = every row at once
    missing_eos_penalty: float | None = None  # subtracted from the score of replies that never emit EOS
    # Reward and value models.
    reward_model: str | None = None
    reward_function: str | None = None
    rewards: list[Any] | None = None  # reward sources (strings or mappings), see jaxalign.rl.sources
    # length_penalty / length_normalize / clip applied to the trained reward (jaxalign.rl.shaping)
    reward_shaping: dict[str, Any] | None = None
    value_model: str | None = None
    frozen_dtype: str = "float32"  # storage dtype of the reference and reward models
    # The update.
    num_ppo_epochs: int = 4
    num_mini_batches: int = 1
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    # KL penalty: fixed kl_coef, or adaptive toward target_kl (summed over a reply's tokens).
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    target_kl: float | None = None
    kl_horizon: float = 10_000.0

    def __post_init__(self) -> None:
        problems = []
        if self.kl_estimator not in KL_ESTIMATORS:
            problems.append(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got '{self.kl_estimator}'")
        if self.frozen_dtype not in FROZEN_DTYPES:
            problems.append(f"frozen_dtype must be one of {', '.join(FROZEN_DTYPES)}, got '{self.frozen_dtype}'")
        for name in ("max_new_tokens", "num_ppo_epochs", "num_mini_batches"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cliprange", "cliprange_value", "kl_horizon"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("vf_coef", "entropy_coef", "kl_coef", "temperature"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature == 0:
            problems.append("temperature must be > 0: PPO needs sampled replies (greedy ones have no spread to learn from)")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.target_kl is not None and self.target_kl <= 0:
            problems.append(f"target_kl must be > 0 (or null for a fixed kl_coef), got {self.target_kl}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.generation_slots < 0:
            problems.append(f"generation_slots must be >= 1 (rows sampled at once), or 0 for every row at once, "
                            f"got {self.generation_slots}")
        if self.reward_function is not None and ":" not in self.reward_function:
            problems.append(f"reward_function must be 'module:function' or 'file.py:function', got '{self.reward_function}'")
        if problems:
            raise ValueError("ppo: " + "; ".join(problems))

    def check_for_run(self, batch_size: int) -> None:
        """Checks that only make sense once ``algo: ppo`` is chosen."""
        given = [name for name in ("reward_model", "reward_function", "rewards") if getattr(self, name) is not None]
        if len(given) != 1:
            detail = f"{' and '.join(given)} were given" if given else "neither was given"
            if len(given) == 2 and "rewards" not in given:
                detail = "both were given"
            raise ValueError(f"ppo: set exactly one of ppo.reward_model (a reward-model folder), "
                             f"ppo.reward_function (module:function) or ppo.rewards (a list of sources); {detail}")
        if self.rewards is not None:
            self.reward_specs()  # a bad entry is an error now, naming it
        from jaxalign.rl.shaping import RewardShaping

        RewardShaping.of(self.reward_shaping, "ppo.reward_shaping")
        if batch_size % self.num_mini_batches:
            raise ValueError(f"ppo: num_mini_batches {self.num_mini_batches} does not divide data.batch_size {batch_size}")

    def reward_specs(self) -> list:
        """The configured reward sources (``jaxalign.rl.RewardSpec``): ``rewards``, or the one
        ``reward_model`` / ``reward_function``."""
        from jaxalign.rl.sources import RewardSpec, parse_reward_specs

        if self.rewards is not None:
            return parse_reward_specs(self.rewards, where="ppo.rewards")
        if self.reward_model is not None:
            return [RewardSpec("model", self.reward_model)]
        return [RewardSpec("function", self.reward_function)]

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates in one trainer step."""
        return self.num_ppo_epochs * self.num_mini_batches

    def resolved_value_model(self) -> str:
        if self.value_model is not None:
            return self.value_model
        return self.reward_model if self.reward_model is not None else VALUE_ON_POLICY
