"""Pieces the RL algorithms (PPO, GRPO) share around the rollout layer: the settings they
refuse, the rollout's random key, each split's example rows, the minibatch-update scan."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxalign.config import TrainConfig
from jaxalign.data.rows import ExampleRows

SPLIT_CODES = {"train": 0, "eval": 1}


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
    if cfg.lora is not None and cfg.lora.dropout:
        raise ValueError(f"lora.dropout: {cfg.lora.dropout} would make {algo.upper()}'s ratio against the "
                         "rollout's log-probs (computed without dropout) measure dropout noise; set lora.dropout: 0")


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


def minibatch_orders(state_rng: jax.Array, step: jax.Array, passes: int, rows_total: int,
                     minibatches: int, algo: str, unit: str = "minibatches") -> jax.Array:
    """Row indices ``[passes * minibatches, rows_total // minibatches]``: each pass over one
    rollout visits its rows in a fresh order drawn from the step's key, a minibatch at a time."""
    if rows_total % minibatches:
        raise ValueError(f"{algo}: {rows_total} rollout rows do not split into {minibatches} {unit}")
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state_rng), 2), step)
    order = jnp.stack([jax.random.permutation(jax.random.fold_in(key, index), rows_total) for index in range(passes)])
    return order.reshape(passes * minibatches, rows_total // minibatches)


def scan_minibatch_updates(loss_fn, optimizer, params, opt_state, rollout: dict, order: jax.Array, rows):
    """One optimizer update per row of ``order`` (a ``lax.scan``), each on the rollout rows it
    names; ``loss_fn(params, minibatch) -> (loss, metrics)``. Returns (params, opt_state, the
    per-update metrics with ``loss`` and ``grad_norm`` averaged over the updates)."""

    def update(carry, rows_index):
        params, opt_state = carry
        minibatch = jax.tree.map(lambda x: jnp.take(x, rows_index, axis=0), rollout)
        # Without this XLA replicates the gathered rows: every device would compute the whole minibatch.
        minibatch = jax.lax.with_sharding_constraint(minibatch, rows)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, minibatch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

    (params, opt_state), per_update = jax.lax.scan(update, (params, opt_state), order)
    return params, opt_state, {name: jnp.mean(values) for name, values in per_update.items()}
