"""Pure loss functions and the loss registry (catalogue: docs/losses.md).

The trainer's side::

    cfg = LossConfig(name="sigmoid", beta=0.1)       # validated here
    cfg.kind, cfg.needs_reference                    # what inputs to prepare
    loss_fn = build_loss(cfg)                        # once, outside jit
    out = loss_fn(PreferenceInputs(...))             # LossOutput, inside jit
    loss, metrics = out.result()
    per_example = build_per_example_loss(cfg)(PreferenceInputs(...))  # {name: [N]} before the mean

A user's side::

    @jaxalign.register_loss("my_loss")
    def my_loss(inputs: PreferenceInputs, cfg: LossConfig) -> jax.Array:
        return per_example_losses  # [N]
"""

from jaxalign.losses.accounting import LossOutput, Stat, max_stat, mean_stat, merge_outputs, min_stat
from jaxalign.losses.build import build_loss, build_per_example_loss, compute_loss
from jaxalign.losses.config import LossConfig
from jaxalign.losses.inputs import (
    ListwiseInputs,
    LossInputs,
    PointwiseInputs,
    PreferenceInputs,
    RewardInputs,
    UnpairedInputs,
    batch_scalar,
    completion_lengths,
    example_column,
)
from jaxalign.losses.registry import LossParams, LossSpec, LossTerms, get_loss, list_losses, register_loss

# Importing the catalogue registers the built-in losses; ``ppo`` is PPO's math (public API).
from jaxalign.losses import listwise, pointwise, ppo, preference, reward, unpaired  # noqa: E402,F401  isort: skip

__all__ = [
    "LossConfig",
    "ListwiseInputs",
    "LossInputs",
    "LossOutput",
    "LossParams",
    "LossSpec",
    "PointwiseInputs",
    "LossTerms",
    "PreferenceInputs",
    "RewardInputs",
    "Stat",
    "UnpairedInputs",
    "batch_scalar",
    "build_loss",
    "build_per_example_loss",
    "completion_lengths",
    "compute_loss",
    "example_column",
    "get_loss",
    "list_losses",
    "max_stat",
    "mean_stat",
    "merge_outputs",
    "min_stat",
    "ppo",
    "register_loss",
]
