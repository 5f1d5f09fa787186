"""``GRPOConfig``: the ``grpo:`` section of a run config (``algo: grpo``).

Option names follow TRL's ``GRPOConfig`` where TRL has the option
(``num_generations``, ``max_completion_length``, ``temperature``, ``top_p``,
``top_k``, ``beta``, ``epsilon``, ``epsilon_high``, ``num_iterations``,
``steps_per_generation``, ``loss_type``, ``scale_rewards``,
``importance_sampling_level``, ``mask_truncated_completions``,
``reward_weights``; ``reward_funcs`` is TRL's
trainer argument). Ours: ``advantage_estimator``, ``dynamic_sampling``,
``max_dynamic_sampling_tries``, ``overlong_buffer_len``,
``overlong_penalty_factor``, ``frozen_dtype``. docs/grpo.md lists where the
same name means something slightly different.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
FROZEN_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class GRPOConfig:
    """GRPO-family settings. One trainer step = one generation batch: ``data.batch_size``
    prompts x ``num_generations`` replies, then ``num_iterations`` x ``steps_per_generation``
    optimizer updates on it (each update on 1/``steps_per_generation`` of the rows).

    ``reward_funcs``: the reward sources (strings or mappings, see docs/rl.md: functions,
    reward models, verifiers), weighted by ``reward_weights`` (default: each entry's own
    ``weight``, 1). ``advantage_estimator`` and ``loss_type`` name registered functions
    (``jaxalign.algos.grpo_advantages`` / ``grpo_losses``) or import paths to a user's.
    """

    # Sampling.
    num_generations: int = 8
    max_completion_length: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    generation_slots: int = 0  # rows sampled at once (continuous batching); 0 = every row at once
    # Rewards.
    reward_funcs: list[Any] | None = None
    reward_weights: list[float] | None = None
    # Advantages.
    advantage_estimator: str = "grpo"  # grpo | rloo | reinforce_pp | module:function
    scale_rewards: Any = "group"  # group | batch | none (TRL also takes true = group, false = none)
    # The loss.
    loss_type: str = "dapo"  # grpo | bnpo | dr_grpo | dapo | module:function
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    epsilon: float = 0.2
    epsilon_high: float | None = None  # DAPO's clip-higher; default epsilon
    beta: float = 0.0  # k3 KL to the reference; 0: no reference is loaded
    num_iterations: int = 1
    steps_per_generation: int = 1
    mask_truncated_completions: bool = False
    # DAPO's extras.
    dynamic_sampling: bool = False
    max_dynamic_sampling_tries: int = 3
    overlong_buffer_len: int = 0  # L_cache of the soft overlong punishment; 0 = off
    overlong_penalty_factor: float = 1.0
    # Storage.
    frozen_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.scale_rewards is True:
            self.scale_rewards = "group"
        elif self.scale_rewards is False:
            self.scale_rewards = "none"
        problems = []
        if self.scale_rewards not in SCALE_REWARDS:
            problems.append(f"scale_rewards must be one of {', '.join(SCALE_REWARDS)}, got {self.scale_rewards!r}")
        if self.importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
            problems.append(f"importance_sampling_level must be one of {', '.join(IMPORTANCE_SAMPLING_LEVELS)}, "
                            f"got '{self.importance_sampling_level}'")
        if self.frozen_dtype not in FROZEN_DTYPES:
            problems.append(f"frozen_dtype must be one of {', '.join(FROZEN_DTYPES)}, got '{self.frozen_dtype}'")
        for name in ("num_generations", "max_completion_length", "num_iterations", "steps_per_generation",
                     "max_dynamic_sampling_tries"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            problems.append(f"num_generations must be >= 2 (a group needs several replies to compare), "
                            f"got {self.num_generations}")
        if self.epsilon <= 0:
            problems.append(f"epsilon must be > 0, got {self.epsilon}")
        if self.epsilon_high is not None and self.epsilon_high <= 0:
            problems.append(f"epsilon_high must be > 0 (or null for epsilon), got {self.epsilon_high}")
        for name in ("beta", "overlong_penalty_factor", "overlong_buffer_len"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.overlong_buffer_len >= self.max_completion_length:
            problems.append(f"overlong_buffer_len ({self.overlong_buffer_len}) must be below max_completion_length "
                            f"({self.max_completion_length})")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0: GRPO compares sampled replies, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.generation_slots < 0:
            problems.append(f"generation_slots must be >= 1 (rows sampled at once), or 0 for every row at once, "
                            f"got {self.generation_slots}")
        if problems:
            raise ValueError("grpo: " + "; ".join(problems))

    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def on_policy(self) -> bool:
        """Whether the one update of a generation batch runs on the parameters that sampled it
        (``num_iterations`` and ``steps_per_generation`` 1): then the sampling policy's log-probs
        are the update's own, so the rollout does not compute them (as TRL)."""
        return self.updates_per_step == 1

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates in one trainer step."""
        return self.num_iterations * self.steps_per_generation

    def check_for_run(self, batch_size: int) -> None:
        """Checks that only make sense once ``algo: grpo`` is chosen."""
        if not self.reward_funcs:
            raise ValueError("grpo: set grpo.reward_funcs, a list of reward sources (e.g. "
                             "[{verifier: exact_answer}]; see docs/rl.md)")
        self.reward_specs()  # a bad entry is an error now, naming it
        rows = batch_size * self.num_generations
        if rows % self.steps_per_generation:
            raise ValueError(f"grpo: steps_per_generation {self.steps_per_generation} does not divide the "
                             f"{rows} rows of a generation batch (data.batch_size {batch_size} x num_generations "
                             f"{self.num_generations})")
        from jaxalign.algos import grpo_advantages, grpo_losses

        grpo_advantages.get_estimator(self.advantage_estimator)
        grpo_losses.get_policy_loss(self.loss_type)

    def reward_specs(self) -> list:
        """The reward sources (``jaxalign.rl.RewardSpec``), plus DAPO's soft overlong punishment
        (the ``soft_overlong`` verifier) when ``overlong_buffer_len`` > 0."""
        from jaxalign.rl.sources import RewardSpec, parse_reward_specs

        if self.reward_weights is not None and not isinstance(self.reward_weights, (list, tuple)):
            raise ValueError(f"grpo.reward_weights must be a list of numbers, got {self.reward_weights!r}")
        specs = parse_reward_specs(self.reward_funcs or [], self.reward_weights, where="grpo.reward_funcs")
        if self.overlong_buffer_len:
            specs.append(RewardSpec("verifier", "soft_overlong", weight=self.overlong_penalty_factor,
                                    options={"max_length": self.max_completion_length,
                                             "cache": self.overlong_buffer_len}))
        return specs
