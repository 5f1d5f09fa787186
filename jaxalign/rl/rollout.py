"""The rollout layer: prompts -> n sampled replies each -> scores -> teacher-forced log-probs.

``RolloutEngine`` is built once per run (the models' graph definitions, the
sampling settings, the reward sources) and called with parameters, so its
jitted pieces compile once per shape:

1. ``sample``: the jitted sampler (``jaxalign.generation``) with
   ``num_samples=num_generations``: each prompt is prefilled once and its KV
   cache copied to its n rows; replies are decoded to text on the host.
2. ``score``: every reward source on the real rows, the weighted total.
3. ``teacher_force``: one jitted pass over ``[prompt | reply]`` for the
   policy's log-probs (at the sampling temperature) and, when configured,
   entropies, values (``value_fn``) and the reference's log-probs (only when
   reference parameters are passed: nothing runs for the reference otherwise).

``engine(...)`` runs all three. Each phase is timed (``Rollout.timings``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxalign.data.rows import ExampleRows
from jaxalign.generation import SamplingConfig, generate, stop_token_ids
from jaxalign.rl.record import Rollout, RolloutBatch, host_array
from jaxalign.rl.sources import RewardSet, ScoringInputs
from jaxalign.rl.teacher_forcing import ended_with_stop, policy_pass
from jaxalign.sharding import batch_sharding

# value_fn(value_params, policy hidden states [R, N, H], prompt_ids, prompt_mask, completion_ids,
#          completion_mask) -> values [R, N] float32
ValueFn = Callable[..., jax.Array]
Prompts = Mapping[str, jax.Array]  # prompt_ids, prompt_mask [P, Lp]; example_mask [P]; example_id [P] (optional)


class RolloutEngine:
    """Sample -> score -> teacher-force for one policy architecture.

    policy: the policy ``CausalLM``, or its ``nnx.split`` pair (graphdef, params): only its graph
    definition is kept; parameters are passed per call (e.g. a train state's). tokenizer: the policy's. sampling: how replies are
    sampled (its stop tokens and the model's EOS end a reply). rewards: the weighted reward
    sources (None: ``score`` is unavailable). num_generations: replies per prompt.
    reference_graphdef: the reference model's graph definition (default: the policy's).
    value_fn: computes values from the policy's hidden states (e.g. PPO's value head).
    with_entropy: also return per-token entropies. mesh, rules: the rows' sharding.
    """

    def __init__(self, policy: Any, tokenizer: Any, sampling: SamplingConfig, *,
                 rewards: RewardSet | None = None, num_generations: int = 1,
                 reference_graphdef: nnx.GraphDef | None = None, value_fn: ValueFn | None = None,
                 with_entropy: bool = False, mesh: Mesh | None = None, rules: dict | None = None):
        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {num_generations}")
        graphdef, params = policy if isinstance(policy, tuple) else nnx.split(policy)
        model_config = nnx.merge(graphdef, params).config  # only to read the static config; no copies
        self.policy_graphdef, self.tokenizer, self.sampling = graphdef, tokenizer, sampling
        self.rewards, self.num_generations = rewards, num_generations
        self.reference_graphdef = reference_graphdef or graphdef
        self.value_fn, self.with_entropy = value_fn, with_entropy
        self.mesh, self.rules = mesh, rules
        self.stop_ids = stop_token_ids(sampling, model_config.eos_token_id)
        # Greedy replies have no sampling distribution; their log-probs are the model's own (T = 1).
        self.temperature = sampling.temperature or 1.0
        self._assemble = jax.jit(self._assemble_fn)
        self._teacher_forced = jax.jit(self._teacher_forced_fn)

    # ------------------------------------------------------------------ phases

    def sample(self, policy_params: Any, prompts: Prompts, rng: jax.Array, rows: ExampleRows | None = None) -> Rollout:
        """``num_generations`` replies per prompt, decoded; no scores or log-probs yet.

        prompts: ``prompt_ids``, ``prompt_mask`` ``[P, Lp]`` left-padded, ``example_mask`` ``[P]``
        (0 = padding row) and optionally ``example_id`` ``[P]`` (the pipeline's prompt batches).
        rows: the split's ``ExampleRows``, for prompt texts, ``file:line`` and the rows' columns
        (without it, prompts are decoded from their tokens)."""
        started = time.monotonic()
        out = generate((self.policy_graphdef, policy_params), prompts["prompt_ids"], prompts["prompt_mask"], rng,
                       self.sampling, mesh=self.mesh, rules=self.rules, num_samples=self.num_generations)
        example_mask = prompts.get("example_mask")
        if example_mask is None:
            example_mask = jnp.ones(prompts["prompt_ids"].shape[:1], jnp.float32)
        example_id = prompts.get("example_id")
        if example_id is None:
            example_id = jnp.arange(prompts["prompt_ids"].shape[0], dtype=jnp.int32)
        batch = self._assemble(prompts["prompt_ids"], prompts["prompt_mask"], example_mask, example_id,
                               out.tokens, out.mask)
        ids, mask, real, examples = (host_array(x) for x in (
            batch.completion_ids, batch.completion_mask, batch.row_mask, batch.example_id))
        generated = int(np.sum(mask))
        sampled = time.monotonic()
        count = len(real)
        real_rows = np.flatnonzero(real > 0)
        real_ids = [int(examples[r]) for r in real_rows]
        if rows is not None:
            texts, places, columns = rows.prompts(real_ids), rows.where(real_ids), rows.columns(real_ids)
        else:
            prompt_ids, prompt_mask = host_array(batch.prompt_ids), host_array(batch.prompt_mask)
            texts = [self.tokenizer.decode(prompt_ids[r][prompt_mask[r] > 0], skip_special_tokens=True) for r in real_rows]
            places, columns = [f"example {i}" for i in real_ids], {}
        completion_ids = [ids[r][mask[r] > 0].tolist() for r in real_rows]

        def per_row(values: list, empty: Any) -> list:
            """Values of the real rows spread over all rows (``empty`` in padding rows)."""
            out = [empty] * count
            for r, value in zip(real_rows, values):
                out[r] = value
            return out

        completions = [self.tokenizer.decode(tokens, skip_special_tokens=True) for tokens in completion_ids]
        return Rollout(batch=batch, num_generations=self.num_generations, prompts=per_row(texts, ""),
                       completions=per_row(completions, ""), where=per_row(places, ""),
                       completion_token_ids=per_row(completion_ids, []),
                       columns={name: per_row(values, None) for name, values in columns.items()},
                       generated_tokens=generated,
                       timings={"generation": sampled - started, "decoding": time.monotonic() - sampled})

    def score(self, rollout: Rollout) -> Rollout:
        """Scores the real rows with every reward source; fills ``scores``, ``score_valid``,
        ``rewards``, ``reward_valid`` (padding rows: 0 / not valid)."""
        if self.rewards is None:
            raise ValueError("this RolloutEngine has no reward sources")
        started = time.monotonic()
        inputs = scoring_inputs(rollout)
        real_rows = inputs.rows
        row_scores, row_valid = self.rewards.score(inputs)
        lengths = host_array(rollout.batch.lengths)[real_rows]
        total, total_valid = self.rewards.total(row_scores, row_valid, lengths)
        count, sources = rollout.batch.num_rows, len(self.rewards)
        scores, valid = np.zeros((count, sources), np.float32), np.zeros((count, sources), bool)
        rewards, reward_valid = np.zeros(count, np.float32), np.zeros(count, bool)
        scores[real_rows], valid[real_rows], rewards[real_rows], reward_valid[real_rows] = (
            row_scores, row_valid, total, total_valid)
        batch = rollout.batch.replace(**{name: self.on_rows(value) for name, value in (
            ("scores", scores), ("score_valid", valid), ("rewards", rewards), ("reward_valid", reward_valid))})
        jax.block_until_ready(batch.rewards)
        timings = {**rollout.timings, "scoring": time.monotonic() - started}
        return dataclasses.replace(rollout, batch=batch, sources=self.rewards.names,
                                   weights=tuple(float(w) for w in self.rewards.weights), roles=self.rewards.roles,
                                   source_metrics=dict(self.rewards.last_metrics), timings=timings)

    def teacher_force(self, rollout: Rollout, policy_params: Any, ref_params: Any = None,
                      value_params: Any = None) -> Rollout:
        """One jitted pass: the policy's log-probs (+ entropies, + values with ``value_fn``) and, with
        ``ref_params``, the reference's log-probs; all 0 outside ``completion_mask``.

        ``policy_params`` None skips the policy's pass (``logps`` stays None): an on-policy update
        computes the same log-probs itself. Without it and ``ref_params`` nothing runs."""
        if policy_params is None and (self.with_entropy or self.value_fn is not None):
            raise ValueError("teacher_force: entropies and values come from the policy's pass; pass policy_params")
        started = time.monotonic()
        batch = rollout.batch
        if policy_params is not None or ref_params is not None:
            batch = self._teacher_forced(policy_params, ref_params, value_params, batch)
            jax.block_until_ready(batch)
        timings = {**rollout.timings, "logps": time.monotonic() - started}
        return dataclasses.replace(rollout, batch=batch, timings=timings)

    def __call__(self, policy_params: Any, prompts: Prompts, rng: jax.Array, *, rows: ExampleRows | None = None,
                 ref_params: Any = None, value_params: Any = None) -> Rollout:
        """``sample``, ``score`` (when there are reward sources), ``teacher_force``."""
        rollout = self.sample(policy_params, prompts, rng, rows)
        if self.rewards is not None:
            rollout = self.score(rollout)
        return self.teacher_force(rollout, policy_params, ref_params, value_params)

    def on_rows(self, array: np.ndarray) -> jax.Array:
        """A host array with one entry per rollout row ``[R, ...]`` (e.g. a per-row mask an algorithm
        computed from scores), as a global array sharded like the rollout's rows; every process passes
        the whole array. Without a mesh, a plain device array."""
        if self.mesh is None:
            return jnp.asarray(array)
        return jax.make_array_from_callback(array.shape, batch_sharding(self.mesh), lambda index: array[index])

    # ------------------------------------------------------------------ jitted pieces


    def _assemble_fn(self, prompt_ids, prompt_mask, example_mask, example_id, tokens, mask) -> RolloutBatch:
        n = self.num_generations
        rows = lambda x: jnp.repeat(x, n, axis=0) if n > 1 else x  # noqa: E731
        row_mask = rows(example_mask).astype(jnp.float32)
        completion_mask = mask.astype(jnp.float32) * row_mask[:, None]
        real = row_mask > 0
        batch = RolloutBatch(
            prompt_ids=rows(prompt_ids).astype(jnp.int32), prompt_mask=rows(prompt_mask).astype(jnp.int32),
            completion_ids=tokens, completion_mask=completion_mask,
            lengths=jnp.sum(completion_mask, axis=1).astype(jnp.int32),
            truncated=real & ~ended_with_stop(tokens, completion_mask, self.stop_ids),
            row_mask=row_mask, group=jnp.arange(tokens.shape[0], dtype=jnp.int32) // n,
            example_id=rows(example_id).astype(jnp.int32))
        return self._constrain(batch)

    def _teacher_forced_fn(self, policy_params, ref_params, value_params, batch: RolloutBatch) -> RolloutBatch:
        mask = batch.completion_mask
        rows = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, mask)
        out = {}
        if policy_params is not None:
            policy = nnx.merge(self.policy_graphdef, policy_params)
            logps, entropy, hidden = policy_pass(policy, *rows, self.temperature)
            out["logps"] = logps * mask
            if self.with_entropy:
                out["entropy"] = entropy * mask
            if self.value_fn is not None:
                out["values"] = self.value_fn(value_params, hidden, *rows) * mask
        if ref_params is not None:
            reference = nnx.merge(self.reference_graphdef, ref_params)
            out["ref_logps"] = policy_pass(reference, *rows, self.temperature)[0] * mask
        return self._constrain(batch.replace(**out))

    def _constrain(self, batch: RolloutBatch) -> RolloutBatch:
        if self.mesh is None:
            return batch
        return jax.lax.with_sharding_constraint(batch, batch_sharding(self.mesh))




def scoring_inputs(rollout: Rollout) -> ScoringInputs:
    """What reward sources see of a rollout: its real rows' texts, token ids, columns and places
    (e.g. to score a rollout with another ``RewardSet``: ``reward_set.score(scoring_inputs(r))``)."""
    real_rows = np.flatnonzero(host_array(rollout.batch.row_mask) > 0)
    pick = lambda values: [values[r] for r in real_rows]  # noqa: E731
    return ScoringInputs(
        prompts=pick(rollout.prompts), completions=pick(rollout.completions),
        completion_ids=pick(rollout.completion_token_ids),
        columns={name: pick(values) for name, values in rollout.columns.items()},
        where=pick(rollout.where), rows=real_rows, batch=rollout.batch)
