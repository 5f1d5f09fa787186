"""The rollout record: what one pass of sample -> score -> teacher-force produced.

``RolloutBatch`` is a pytree of device arrays (pass it into jitted steps);
``Rollout`` wraps it with the host-side text, source names and timings.

Rows: R = P prompts x ``num_generations``; row ``p * n + j`` is prompt ``p``'s
``j``-th sample (``group`` = p). Padding prompt rows (``row_mask`` 0) have
empty completions and no scores. Lp = prompt slots (left-padded), N =
``max_new_tokens``, S = reward sources.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class RolloutBatch:
    """Device arrays of one rollout (shapes above). Optional parts are None when not computed.

    prompt_ids, prompt_mask ``[R, Lp]`` int32: each row's prompt (left-padded).
    completion_ids ``[R, N]`` int32: sampled tokens, the pad id after the stop token.
    completion_mask ``[R, N]`` float32: 1 up to and including the stop token; 0 in padding rows.
    lengths ``[R]`` int32: completion tokens. truncated ``[R]`` bool: a real row with no stop
        token within ``max_new_tokens``.
    row_mask ``[R]`` float32: 1 for real rows. group ``[R]`` int32: the row's prompt in the batch.
    example_id ``[R]`` int32: the prompt's example id in its split (``data.ExampleRows``).
    scores ``[R, S]`` float32: each source's score (0 where not valid); score_valid ``[R, S]`` bool.
    rewards ``[R]`` float32: sum of weight x score over each row's valid sources; reward_valid
        ``[R]`` bool: at least one source scored the row.
    logps ``[R, N]`` float32: the policy's log-probs of the sampled tokens at the sampling
        temperature (teacher-forced; 0 outside the mask). ref_logps: the reference's (None when
        no reference was asked for). values, entropy ``[R, N]``: when asked for.
    """

    prompt_ids: jax.Array
    prompt_mask: jax.Array
    completion_ids: jax.Array
    completion_mask: jax.Array
    lengths: jax.Array
    truncated: jax.Array
    row_mask: jax.Array
    group: jax.Array
    example_id: jax.Array
    scores: jax.Array | None = None
    score_valid: jax.Array | None = None
    rewards: jax.Array | None = None
    reward_valid: jax.Array | None = None
    logps: jax.Array | None = None
    ref_logps: jax.Array | None = None
    values: jax.Array | None = None
    entropy: jax.Array | None = None

    @property
    def num_rows(self) -> int:
        return self.completion_ids.shape[0]


@dataclasses.dataclass
class Rollout:
    """A ``RolloutBatch`` and its host side.

    Per row (padding rows: "", [] or None): prompts, completions (decoded without
    special tokens), completion_token_ids (up to and including the stop token),
    where (the prompt's dataset location, ``file:line``, when known) and columns
    (the dataset row's other columns, ``{name: [value per row]}``). sources,
    weights: the reward sources' names and weights (columns of ``batch.scores``).
    timings: seconds per phase (``generation``, ``decoding``, ``scoring``,
    ``logps``). generated_tokens: completion tokens in the batch."""

    batch: RolloutBatch
    num_generations: int
    prompts: list[str]
    completions: list[str]
    where: list[str]
    completion_token_ids: list[list[int]] = dataclasses.field(default_factory=list)
    columns: dict[str, list] = dataclasses.field(default_factory=dict)
    sources: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    roles: tuple[str, ...] = ()  # each source's role: train (in ``rewards``) or gold (logged only)
    source_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. an ensemble's disagreement
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    generated_tokens: int = 0

    @property
    def num_prompts(self) -> int:
        return self.batch.num_rows // self.num_generations

    def host(self) -> dict[str, np.ndarray]:
        """The batch's arrays on this host as numpy (gathered across processes; None parts left out)."""
        return {field.name: host_array(getattr(self.batch, field.name)) for field in dataclasses.fields(self.batch)
                if getattr(self.batch, field.name) is not None}

    def metrics(self) -> dict[str, float]:
        """TRL's rollout metrics over real rows: ``reward``, ``reward_std``, ``rewards/NAME/mean``
        and ``/std`` (over the rows each source scored), ``frac_reward_zero_std`` (groups whose
        rewards are all equal; with several generations), ``completions/mean_length``,
        ``completions/clipped_ratio`` (truncated share), plus ``rewards/unscored_rows`` (rows no
        source scored); with gold-role sources ``gold/reward`` and ``gold/reward_std`` (their
        weighted sum over the rows they scored), and the sources' own metrics (``source_metrics``)."""
        arrays = self.host()
        real = arrays["row_mask"] > 0
        out = {"completions/mean_length": _mean(arrays["lengths"][real]),
               "completions/clipped_ratio": _mean(arrays["truncated"][real])}
        if arrays.get("rewards") is None:
            return out
        scored = real & arrays["reward_valid"]
        out.update(reward=_mean(arrays["rewards"][scored]), reward_std=_std(arrays["rewards"][scored]),
                   **{"rewards/unscored_rows": float(np.sum(real & ~arrays["reward_valid"]))})
        for index, name in enumerate(self.sources):
            column = arrays["scores"][:, index][real & arrays["score_valid"][:, index]]
            out[f"rewards/{name}/mean"], out[f"rewards/{name}/std"] = _mean(column), _std(column)
        gold, gold_valid = self.gold(arrays)
        if gold is not None:
            out["gold/reward"], out["gold/reward_std"] = _mean(gold[gold_valid]), _std(gold[gold_valid])
        out.update(self.source_metrics)
        if self.num_generations > 1:
            groups = arrays["rewards"].reshape(-1, self.num_generations)
            group_real = real.reshape(-1, self.num_generations).all(axis=1)
            out["frac_reward_zero_std"] = _mean(np.ptp(groups[group_real], axis=1) == 0) if group_real.any() else 0.0
        return out

    def gold(self, arrays: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(gold reward ``[R]``: the weighted sum of the gold-role sources' valid scores, whether a gold
        source scored the real row ``[R]``), or (None, None) without gold sources."""
        gold_columns = [i for i, role in enumerate(self.roles) if role == "gold"]
        if not gold_columns:
            return None, None
        arrays = self.host() if arrays is None else arrays
        scores, valid = arrays["scores"][:, gold_columns], arrays["score_valid"][:, gold_columns]
        weights = np.asarray(self.weights, np.float32)[gold_columns]
        total = np.sum(np.where(valid, scores * weights, 0.0), axis=1)
        return total, valid.any(axis=1) & (arrays["row_mask"] > 0)

    def completion_rows(self, step: int, advantages: np.ndarray | None = None) -> list[dict]:
        """The standard ``completions`` table (docs/logging.md), one row per real reply:
        ``step``, ``prompt``, ``completion``, ``reward`` (the weighted total; None when no source
        scored it), ``rewards`` ({source: score or None}), ``advantage`` (``advantages`` ``[R]``
        when given, else None), ``length``, ``truncated``."""
        arrays = self.host()
        gold, gold_valid = self.gold(arrays) if arrays.get("scores") is not None else (None, None)
        rows = []
        for r in np.flatnonzero(arrays["row_mask"] > 0):
            scored = arrays.get("reward_valid") is not None and bool(arrays["reward_valid"][r])
            rows.append({
                "step": int(step), "prompt": self.prompts[r], "completion": self.completions[r],
                "reward": float(arrays["rewards"][r]) if scored else None,
                "rewards": {name: float(arrays["scores"][r, i]) if arrays["score_valid"][r, i] else None
                            for i, name in enumerate(self.sources)},
                **({"gold": float(gold[r]) if gold_valid[r] else None} if gold is not None else {}),
                "advantage": None if advantages is None else float(advantages[r]),
                "length": int(arrays["lengths"][r]), "truncated": bool(arrays["truncated"][r]),
            })
        return rows

    def select_groups(self, groups: Sequence[int]) -> "Rollout":
        """The rows of the given prompt groups, in that order (e.g. DAPO's dynamic sampling keeps the
        groups whose rewards differ)."""
        n = self.num_generations
        rows = np.asarray([g * n + j for g in groups for j in range(n)], np.int32)
        batch = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), self.batch)
        batch = batch.replace(group=jnp.arange(len(rows), dtype=jnp.int32) // n)
        pick = lambda items: [items[r] for r in rows]  # noqa: E731
        return dataclasses.replace(self, batch=batch, prompts=pick(self.prompts), completions=pick(self.completions),
                                   where=pick(self.where), completion_token_ids=pick(self.completion_token_ids),
                                   columns={name: pick(values) for name, values in self.columns.items()})


def concatenate(rollouts: Sequence[Rollout]) -> Rollout:
    """Rollouts of the same sources and ``num_generations`` stacked row-wise (prompts left-padded to
    the widest; group indices renumbered): how DAPO refills a batch from further prompts."""
    first = rollouts[0]
    if any(r.num_generations != first.num_generations or r.sources != first.sources for r in rollouts):
        raise ValueError("concatenate: rollouts must share num_generations and reward sources")
    width = max(r.batch.prompt_ids.shape[1] for r in rollouts)
    batches, offset = [], 0
    for rollout in rollouts:
        batch = rollout.batch
        pad = ((0, 0), (width - batch.prompt_ids.shape[1], 0))
        group = jnp.arange(batch.num_rows, dtype=jnp.int32) // rollout.num_generations + offset
        batches.append(batch.replace(prompt_ids=jnp.pad(batch.prompt_ids, pad), prompt_mask=jnp.pad(batch.prompt_mask, pad),
                                     group=group))
        offset += rollout.num_prompts
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *batches)
    joined = lambda lists: [item for items in lists for item in items]  # noqa: E731
    names = sorted({name for r in rollouts for name in r.columns})
    columns = {name: joined(r.columns.get(name, [None] * r.batch.num_rows) for r in rollouts) for name in names}
    timings = {name: sum(r.timings.get(name, 0.0) for r in rollouts) for name in first.timings}
    # Per-batch source metrics (an ensemble's disagreement): their mean over the rollouts, by rows.
    rows = np.asarray([r.batch.num_rows for r in rollouts], np.float64)
    source_metrics = {name: float(np.average([r.source_metrics.get(name, np.nan) for r in rollouts], weights=rows))
                      for name in first.source_metrics}
    return dataclasses.replace(
        first, batch=stacked, prompts=joined(r.prompts for r in rollouts),
        completions=joined(r.completions for r in rollouts), where=joined(r.where for r in rollouts),
        completion_token_ids=joined(r.completion_token_ids for r in rollouts), columns=columns, timings=timings,
        source_metrics=source_metrics,
        generated_tokens=sum(r.generated_tokens for r in rollouts))


def host_array(array: jax.Array) -> np.ndarray:
    """The whole global array on this host (gathered across processes when sharded over them)."""
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if np.size(values) else math.nan


def _std(values: np.ndarray) -> float:
    """Sample standard deviation (Bessel-corrected, as TRL's ``nanstd``); NaN under two values."""
    return float(np.std(values, ddof=1)) if np.size(values) > 1 else math.nan
