"""PPO for RLHF (Ziegler et al. 2019; Ouyang et al. 2022), in TRL's vocabulary.

One trainer step = one iteration:

1. ``rollout`` (host-side hook, called by the trainer before the step): the
   jitted KV-cache sampler answers the batch's prompts with the policy; the
   replies are scored (a frozen reward model's forward, or a Python function
   on decoded strings, at the edge); one jitted pass then computes the old
   policy log-probs, reference log-probs and values by teacher forcing, the
   per-token rewards (score minus ``kl_coef`` x KL estimate) and whitened GAE
   advantages.
2. ``train_step`` (pure, jitted by the trainer): ``num_ppo_epochs`` x
   ``num_mini_batches`` updates of the clipped surrogate + clipped value loss
   in one ``lax.scan``, then the adaptive KL coefficient's update.

State: ``params = {"policy": ..., "value": ...}`` under one optimizer (the
value is a separate ``ScoreModel`` or a head on the policy's decoder);
``extra = {"kl_coef": []}``. Frozen: the reference (the starting policy by
default) and the reward model, optionally stored in bfloat16. Export writes
the policy alone as a ``*ForCausalLM`` folder.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxalign.algos import common
from jaxalign.algos import ppo_math as pm
from jaxalign.algos.ppo_config import VALUE_ON_POLICY, PPOConfig
from jaxalign.algos.registry import Algorithm, register_algorithm
from jaxalign.config import ModelSpec, TrainConfig
from jaxalign.generation import SamplingConfig, generate
from jaxalign.losses.ppo import KLControl
from jaxalign.metrics_log import get_logger
from jaxalign.models import save_pretrained
from jaxalign.sharding import batch_sharding, replicated, rules_from
from jaxalign.train_state import AlgoRun, Batch, TrainState

log = get_logger()
SPLIT_CODES = {"train": 0, "eval": 1}


def data_kind(cfg: TrainConfig) -> str:
    return "prompt"


def _frozen_copy(params: Any, dtype: str) -> Any:
    """A separate copy (the policy's buffers are donated every step), in ``dtype`` for storage."""
    target = jnp.dtype(dtype)
    # astype to the same dtype returns the same buffer, which the first donated step would delete.
    return jax.tree.map(
        lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != target else jnp.copy(x),
        params)


def _value_model(cfg: TrainConfig, mesh: Mesh, tokenizer, policy_params: dict):
    """(graphdef or None, value params): a ``ScoreModel`` from a folder, or a zero-initialised
    head ``{"kernel": [H, 1]}`` on the policy's decoder."""
    source = cfg.ppo.resolved_value_model()
    if source == VALUE_ON_POLICY:
        hidden = policy_params["model"]["embed_tokens"]["embedding"].shape[1]
        kernel = jnp.zeros((hidden, 1), jnp.dtype(cfg.model.param_dtype))
        return None, {"kernel": common.on_mesh(kernel, mesh)}
    spec = dataclasses.replace(cfg.model, path=source, config=None)
    return common.split_params(common.build_model(spec, cfg, mesh, head="score", tokenizer=tokenizer))


def setup(cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int) -> AlgoRun:
    ppo = cfg.ppo
    policy_graphdef, policy_params = common.split_params(
        common.build_model(cfg.model, cfg, mesh, head="causal_lm", tokenizer=tokenizer))
    if cfg.ref_model is not None:
        spec = dataclasses.replace(cfg.ref_model, param_dtype=ppo.frozen_dtype)
        ref_graphdef, ref_params = common.split_params(
            common.build_model(spec, cfg, mesh, head="causal_lm", tokenizer=tokenizer))
    else:
        ref_graphdef, ref_params = policy_graphdef, _frozen_copy(policy_params, ppo.frozen_dtype)
    frozen: dict[str, Any] = {"ref": ref_params}
    reward_graphdef = None
    if ppo.reward_model is not None:
        spec = ModelSpec(path=ppo.reward_model, dtype=cfg.model.dtype, param_dtype=ppo.frozen_dtype)
        reward_graphdef, frozen["reward"] = common.split_params(
            common.build_model(spec, cfg, mesh, head="score", tokenizer=tokenizer))
        reward_vocab = nnx.merge(reward_graphdef, frozen["reward"]).config.vocab_size
        if reward_vocab < len(tokenizer):
            raise ValueError(f"ppo.reward_model {ppo.reward_model} has a vocabulary of {reward_vocab} tokens, fewer "
                             f"than the policy's tokenizer ({len(tokenizer)}): it must use the same tokenizer")
    value_graphdef, value_params = _value_model(cfg, mesh, tokenizer, policy_params)

    # The schedule counts optimizer updates: num_ppo_epochs x num_mini_batches per step.
    extra = {"kl_coef": jnp.asarray(ppo.kl_coef, jnp.float32)}
    state, optimizer = common.init_train_state(cfg, mesh, {"policy": policy_params, "value": value_params},
                                               total_steps * ppo.updates_per_step, extra)
    control = KLControl(init_coef=ppo.kl_coef, target=ppo.target_kl, horizon=ppo.kl_horizon)
    stop_ids = (int(tokenizer.eos_token_id),)
    sampling = SamplingConfig(max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature, top_k=ppo.top_k,
                              top_p=ppo.top_p, stop_token_ids=stop_ids, pad_token_id=int(tokenizer.pad_token_id or 0))
    rules = rules_from(cfg.mesh)
    rows = batch_sharding(mesh)

    def forward(params: dict, batch: Batch, ref: bool = False) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """(reply log-probs, entropies, values) ``[B, N]`` of the policy (or the reference: no values)."""
        graphdef = ref_graphdef if ref else policy_graphdef
        model = nnx.merge(graphdef, params if ref else params["policy"])
        ids, positions, segment_ids = pm.sequences(batch)
        prompt_length = batch["prompt_ids"].shape[1]
        hidden = pm.reply_hidden(model.hidden_states(ids, positions, segment_ids), prompt_length)
        logps, entropy = pm.reply_logps(model.output_embedding(), hidden, batch["tokens"], ppo.temperature)
        if ref:
            return logps, entropy, None
        if value_graphdef is None:
            values = pm.head_values(hidden, params["value"])
        else:
            value_model = nnx.merge(value_graphdef, params["value"])
            values = pm.reply_hidden(value_model.scores(ids, positions, segment_ids)[..., None], prompt_length)[..., 0]
        return logps, entropy, values

    @jax.jit
    def reward_scores(reward_params, batch: Batch) -> jax.Array:
        model = nnx.merge(reward_graphdef, reward_params)
        return pm.last_token_scores(model.scores(*pm.sequences(batch)), batch)

    @jax.jit
    def prepare(params: dict, frozen: dict, batch: Batch, kl_coef: jax.Array) -> Batch:
        """The rollout's teacher-forced pass and advantages; everything the update needs."""
        mask = batch["response_mask"]
        old_logps, _, old_values = forward(params, batch)
        ref_logps, _, _ = forward(frozen["ref"], batch, ref=True)
        ended = pm.ended_with_stop(batch["tokens"], mask, stop_ids)
        scores = batch["scores"]
        if ppo.missing_eos_penalty is not None:
            scores = jnp.where(ended | (batch["example_mask"] == 0), scores, scores - ppo.missing_eos_penalty)
        out = {**batch, "scores": scores, "old_logps": old_logps * mask, "ref_logps": ref_logps * mask,
               "old_values": old_values * mask, "num_eos": ended.astype(jnp.float32) * batch["example_mask"]}
        return jax.lax.with_sharding_constraint({**out, **pm.advantages(out, ppo, kl_coef)}, rows)

    @jax.jit
    def rollout_key(rng: jax.Array, step: jax.Array, split: int, index: int) -> jax.Array:
        key = jax.random.fold_in(jax.random.wrap_key_data(rng), split)
        return jax.random.fold_in(key, jnp.where(split == 0, step, index))

    reward_fn = None
    columns = {}
    if ppo.reward_function is not None:
        from jaxalign.rewards import load_reward_function

        reward_fn = load_reward_function(ppo.reward_function)
        columns = {split: _row_columns(cfg, split, tokenizer) for split in ("train", "eval")}

    def score(state: TrainState, frozen: dict, batch: Batch, split: str) -> jax.Array:
        """Scores ``[B]`` float32 on the rows' sharding: the reward model's, or the Python function's."""
        if reward_fn is None:
            return reward_scores(frozen["reward"], batch)
        from jaxalign.rewards import call_reward_function

        tokens, mask, ids, real = (_host(batch[k]) for k in ("tokens", "response_mask", "example_id", "example_mask"))
        real_rows = np.flatnonzero(real > 0)
        completions = [tokenizer.decode(tokens[r][mask[r] > 0], skip_special_tokens=True) for r in real_rows]
        prompts, row_columns = columns[split].batch([int(ids[r]) for r in real_rows])
        values = call_reward_function(reward_fn, ppo.reward_function, prompts, completions, row_columns)
        scores = np.zeros(tokens.shape[0], np.float32)
        scores[real_rows] = values
        return jax.make_array_from_callback(scores.shape, rows, lambda index: scores[index])

    def rollout(state: TrainState, batch: Batch, frozen: dict, split: str, index: int) -> tuple[Batch, dict[str, float]]:
        """Host-side: sample, score, teacher-forced pass. Returns the update's batch and
        seconds spent (generation, scoring, log-probs/values/advantages) and tokens generated."""
        start = time.monotonic()
        key = rollout_key(state.rng, state.step, SPLIT_CODES[split], index)
        out = generate((policy_graphdef, state.params["policy"]), batch["prompt_ids"], batch["prompt_mask"], key,
                       sampling, mesh=mesh, rules=rules)
        example_mask = batch["example_mask"].astype(jnp.float32)
        rollout_batch = {**batch, "tokens": out.tokens,
                         "response_mask": out.mask.astype(jnp.float32) * example_mask[:, None]}
        generated = int(jax.device_get(jnp.sum(out.lengths)))  # waits for the sampler
        sampled = time.monotonic()
        rollout_batch["scores"] = score(state, frozen, rollout_batch, split)
        jax.block_until_ready(rollout_batch["scores"])
        scored = time.monotonic()
        rollout_batch = prepare(state.params, frozen, rollout_batch, state.extra["kl_coef"])
        # The trainer counts processed tokens from segment_ids: prompt + reply tokens of each row.
        rollout_batch["segment_ids"] = jnp.concatenate(
            [rollout_batch["prompt_mask"], rollout_batch["response_mask"].astype(jnp.int32)], axis=1)
        jax.block_until_ready(rollout_batch)
        prepared = time.monotonic()
        return rollout_batch, {"time/generation_s": sampled - start, "time/scoring_s": scored - sampled,
                               "time/logps_s": prepared - scored, "tokens/generation": float(generated)}

    def train_step(state: TrainState, batch: Batch, frozen: dict) -> tuple[TrainState, dict]:
        rows_total = batch["prompt_ids"].shape[0]
        minibatches = ppo.num_mini_batches
        if rows_total % minibatches:
            raise ValueError(f"ppo: {rows_total} rollout rows do not split into {minibatches} minibatches")
        key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state.rng), 2), state.step)
        # Each epoch visits the rows in a fresh order, num_mini_batches at a time.
        order = jnp.stack([jax.random.permutation(jax.random.fold_in(key, epoch), rows_total)
                           for epoch in range(ppo.num_ppo_epochs)])
        order = order.reshape(ppo.updates_per_step, rows_total // minibatches)
        update_keys = ("prompt_ids", "prompt_mask", "tokens", "response_mask", "old_logps", "old_values",
                       "advantages", "returns")
        rollout = {name: batch[name] for name in update_keys}

        def loss_fn(params: dict, minibatch: Batch):
            logps, entropy, values = forward(params, minibatch)
            return pm.minibatch_loss(logps, entropy, values, minibatch, ppo)

        def update(carry, rows_index):
            params, opt_state = carry
            minibatch = jax.tree.map(lambda x: jnp.take(x, rows_index, axis=0), rollout)
            # Without this XLA replicates the gathered rows: every device would compute the whole minibatch.
            minibatch = jax.lax.with_sharding_constraint(minibatch, rows)
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, minibatch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (params, opt_state), {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

        (params, opt_state), per_update = jax.lax.scan(update, (state.params, state.opt_state), order)
        metrics = {name: jnp.mean(values) for name, values in per_update.items()}
        metrics.update(pm.rollout_metrics(batch))
        metrics["objective/kl_coef"] = state.extra["kl_coef"]
        real = jnp.sum(batch["example_mask"])
        kl_coef = control.update(state.extra["kl_coef"], metrics["objective/kl"], real)
        metrics["tokens/training"] = jnp.sum(batch["segment_ids"]) * ppo.num_ppo_epochs
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              extra={**state.extra, "kl_coef": kl_coef})
        return state, metrics

    def eval_step(state: TrainState, batch: Batch, frozen: dict) -> dict:
        return {**pm.rollout_metrics(batch), "eval_weight": jnp.sum(batch["example_mask"])}

    def export(state: TrainState, path: str) -> None:
        save_pretrained(nnx.merge(policy_graphdef, state.params["policy"]), path)

    return AlgoRun(state=state, frozen=frozen, train_step=train_step, eval_step=eval_step, export=export,
                   rollout=rollout, updates_per_step=ppo.updates_per_step)


def _host(array: jax.Array) -> np.ndarray:
    """The whole global array on this host (gathered across processes when sharded over them)."""
    if array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _row_columns(cfg: TrainConfig, split: str, tokenizer):
    """The split's rows by example id (as the pipeline numbers them), for the reward function's columns."""
    import functools

    from jaxalign.data.chat import ChatRenderer
    from jaxalign.data.errors import Counter
    from jaxalign.data.formats import detect_format, format_rows
    from jaxalign.data.pipeline import _split_rows
    from jaxalign.rewards import RowColumns

    if split == "eval" and cfg.data.eval is None and cfg.data.eval_fraction == 0:
        return None
    rows = _split_rows(cfg.data, split)
    fmt = detect_format(rows) if cfg.data.format == "auto" else cfg.data.format
    renderer = functools.cache(lambda: ChatRenderer(tokenizer))
    examples = format_rows(rows, fmt, "prompt", renderer, cfg.data.on_bad_row, Counter())
    return RowColumns(examples, rows)


@register_algorithm
class PPO(Algorithm):
    """``algo: ppo``: RLHF with a rollout hook (``ppo:`` section, ``ppo_config.PPOConfig``)."""

    name = "ppo"
    sections = {"ppo": PPOConfig}
    supports_lora = False  # until PPO is rebuilt on the rollout layer

    def check_config(self, cfg: TrainConfig) -> None:
        cfg.ppo.check_for_run(cfg.data.batch_size)
        if cfg.model.partial:
            raise ValueError("model.trainable/model.freeze are not supported by algo ppo yet: it trains the "
                             "whole policy; remove them")
        if cfg.optim.grad_accum_steps != 1:
            raise ValueError("optim.grad_accum_steps must be 1 for algo ppo: each step's rollout is split "
                             "into ppo.num_mini_batches instead")
        if cfg.precompute_ref_logps:
            raise ValueError("precompute_ref_logps does not apply to algo ppo: its replies are sampled "
                             "during training, so the reference scores them as they come")

    def data_kind(self, cfg: TrainConfig) -> str:
        return data_kind(cfg)

    def setup(self, cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int, sink=None) -> AlgoRun:
        return setup(cfg, mesh, tokenizer, total_steps)

    def plan_terms(self, cfg: TrainConfig, ctx) -> list:
        from jaxalign.algos import ppo_plan

        return ppo_plan.plan_terms(cfg, ctx)

    def plan_knobs(self, cfg: TrainConfig, plan) -> list:
        from jaxalign.algos import ppo_plan

        return ppo_plan.plan_knobs(cfg, plan)
