"""Pieces the RL algorithms (PPO, GRPO) share around the rollout layer: frozen copies of
the starting policy, the rollout's random key, each split's example rows."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.config import TrainConfig
from jaxalign.data.rows import ExampleRows

SPLIT_CODES = {"train": 0, "eval": 1}


def frozen_copy(params: Any, dtype: str) -> Any:
    """A separate copy (the policy's buffers are donated every step), in ``dtype`` for storage."""
    target = jnp.dtype(dtype)
    # astype to the same dtype returns the same buffer, which the first donated step would delete.
    return jax.tree.map(
        lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != target else jnp.copy(x),
        params)


@jax.jit
def _rollout_key(rng: jax.Array, step: jax.Array, split: int, index: int) -> jax.Array:
    key = jax.random.fold_in(jax.random.wrap_key_data(rng), split)
    return jax.random.fold_in(key, jnp.where(split == 0, step, index))


def rollout_key(rng: jax.Array, step: jax.Array, split: str, index: int) -> jax.Array:
    """The sampling key of a rollout: a function of the train state's seed and step (train) or the
    eval batch's number (eval), so a resumed run samples what an uninterrupted one would."""
    # From host copies: the state's rng is sharded one way at setup and another after a jitted step, and
    # a key carrying either sharding would make the sampler compile twice.
    return _rollout_key(np.asarray(jax.device_get(rng)), np.asarray(jax.device_get(step)), SPLIT_CODES[split], index)


def check_sampling_run(cfg: TrainConfig, algo: str, split_option: str) -> None:
    """The settings an algorithm that samples its own replies cannot take (``split_option``: the
    option that splits a rollout into updates instead of gradient accumulation)."""
    if cfg.model.partial:
        raise ValueError(f"model.trainable/model.freeze are not supported by algo {algo} yet: it trains the "
                         "whole policy; remove them")
    if cfg.optim.grad_accum_steps != 1:
        raise ValueError(f"optim.grad_accum_steps must be 1 for algo {algo}: each step's rollout is split "
                         f"into {split_option} instead")
    if cfg.precompute_ref_logps:
        raise ValueError(f"precompute_ref_logps does not apply to algo {algo}: its replies are sampled "
                         "during training, so the reference scores them as they come")


class ExampleRowsBySplit:
    """Each split's ``ExampleRows`` (prompt texts, ``file:line``, the rows' columns), read on first use."""

    def __init__(self, cfg: TrainConfig, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer
        self._loaded: dict[str, ExampleRows | None] = {}

    def __call__(self, split: str) -> ExampleRows | None:
        if split not in self._loaded:
            self._loaded[split] = ExampleRows.of_split(self.cfg.data, split, self.tokenizer)
        return self._loaded[split]

    def sample_prompts(self) -> list[str]:
        """Up to 64 training prompts: what a reward model's tokenizer is checked against."""
        rows = self("train")
        return rows.prompts(range(min(len(rows), 64))) if rows is not None else []
