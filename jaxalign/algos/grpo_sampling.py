"""GRPO's sampling step, with DAPO's dynamic sampling (Yu et al. 2025).

A group whose replies all got the same reward has advantage 0 under a group
baseline and teaches nothing. With ``grpo.dynamic_sampling`` such groups are
dropped and the batch is refilled with groups from further training prompts,
sampled and scored the same way, for at most ``max_dynamic_sampling_tries``
samplings per step. The batch keeps its shape (``data.batch_size`` groups, so
the update compiles once): when the tries run out, the missing groups are
filled with dropped ones that are masked out of the update (counted in
``dynamic_sampling/filler_groups``).

The further prompts are drawn from the training split by the step's key, so a
resumed run draws the same ones.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign import rl
from jaxalign.data.rows import ExampleRows
from jaxalign.rl.record import host_array

REFILL_KEY = 1_000_003  # folds the step's key into the refill prompts' draw, apart from the sampling keys


def informative_groups(rollout: rl.Rollout) -> list[int]:
    """Prompt groups with at least two scored replies whose rewards differ."""
    n = rollout.num_generations
    rewards = host_array(rollout.batch.rewards).reshape(-1, n)
    valid = (host_array(rollout.batch.reward_valid) & (host_array(rollout.batch.row_mask) > 0)).reshape(-1, n)
    out = []
    for group in range(rewards.shape[0]):
        scored = rewards[group][valid[group]]
        if scored.size > 1 and np.ptp(scored) > 0:
            out.append(group)
    return out


class DynamicSampler:
    """``sampler(params, prompts, key, rows, dynamic) -> (scored rollout, keep [R] float32, metrics)``.

    Without ``dynamic`` (eval batches) or with ``cfg.dynamic_sampling`` off: one sample + score, every
    row kept. train_rows: the training split's ``ExampleRows`` (the refill prompts' source)."""

    def __init__(self, engine: rl.RolloutEngine, cfg: Any, data_cfg: Any, tokenizer: Any,
                 train_rows: ExampleRows | None, mesh: Any = None):
        self.engine, self.cfg, self.data_cfg, self.tokenizer = engine, cfg, data_cfg, tokenizer
        self.train_rows, self.mesh = train_rows, mesh

    def __call__(self, params: Any, prompts: dict, key: jax.Array, rows: ExampleRows | None,
                 dynamic: bool) -> tuple[rl.Rollout, jax.Array, dict[str, float]]:
        first = self.engine.score(self.engine.sample(params, prompts, key, rows))
        if not (dynamic and self.cfg.dynamic_sampling):
            return first, jnp.ones((first.batch.num_rows,), jnp.float32), {}
        wanted, n = first.num_prompts, self.cfg.num_generations
        pool, kept = [first], [(0, g) for g in informative_groups(first)]
        seen_zero_std = _real_groups(first) - len(kept)
        while len(kept) < wanted and len(pool) < self.cfg.max_dynamic_sampling_tries:
            tries = len(pool)
            refill = self.engine.score(self.engine.sample(params, self._refill_prompts(key, tries, wanted),
                                                          jax.random.fold_in(key, tries), self.train_rows))
            informative = informative_groups(refill)
            seen_zero_std += _real_groups(refill) - len(informative)
            kept += [(tries, g) for g in informative]
            pool.append(refill)
        offsets = np.cumsum([0] + [r.num_prompts for r in pool])
        chosen = [int(offsets[source] + g) for source, g in kept[:wanted]]
        fillers = [g for g in range(first.num_prompts) if g not in set(chosen)][:wanted - len(chosen)]
        combined = rl.concatenate(pool) if len(pool) > 1 else first
        selected = combined.select_groups(chosen + fillers)
        keep = np.repeat(np.concatenate([np.ones(len(chosen)), np.zeros(len(fillers))]), n).astype(np.float32)
        metrics = {"dynamic_sampling/tries": float(len(pool)), "dynamic_sampling/kept_groups": float(len(chosen)),
                   "dynamic_sampling/filler_groups": float(len(fillers)),
                   "dynamic_sampling/dropped_groups": float(seen_zero_std)}
        return selected, self.engine.on_rows(keep), metrics

    def _refill_prompts(self, key: jax.Array, tries: int, count: int) -> dict:
        """``count`` training prompts drawn (with replacement) by the step's key and the try's number."""
        if not self.train_rows:
            raise ValueError("grpo.dynamic_sampling needs the training split's rows to refill from")
        draw = jax.random.fold_in(jax.random.fold_in(key, REFILL_KEY), tries)
        ids = [int(i) for i in np.asarray(jax.random.randint(draw, (count,), 0, len(self.train_rows)))]
        batch = rl.prompt_batch(self.tokenizer, self.train_rows.prompts(ids),
                                max_prompt_length=self.data_cfg.max_prompt_length or self.data_cfg.max_length // 2,
                                pad_to_multiple=self.data_cfg.pad_to_multiple)
        batch["example_id"] = jnp.asarray(ids, jnp.int32)
        return batch


def _real_groups(rollout: rl.Rollout) -> int:
    return int(np.sum(host_array(rollout.batch.row_mask).reshape(-1, rollout.num_generations).any(axis=1)))
