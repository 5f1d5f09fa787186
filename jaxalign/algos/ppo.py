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
``extra = {"kl_coef": []}``. The policy is built through the trainable-subset
seam (``algos.policy.build_policy``): with ``lora:`` or ``model.trainable``
the state holds only the trained part (the adapters), the rest is frozen.
Frozen: that part, the reference (the starting policy by default: with LoRA
the base with adapters off, sharing the frozen part; otherwise copies in
``ppo.frozen_dtype``) and the reward model. A separate value model gets its own
adapters (its score head trained fully); a value head on the policy trains fully.
Export writes the policy alone as a ``*ForCausalLM`` folder (with LoRA what
``lora.export`` says).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxalign import rl
from jaxalign.algos import common, rl_common
from jaxalign.algos import ppo_math as pm
from jaxalign.algos.policy import build_policy, build_trained
from jaxalign.algos.ppo_config import VALUE_ON_POLICY, PPOConfig
from jaxalign.algos.registry import Algorithm, register_algorithm
from jaxalign.config import TrainConfig
from jaxalign.generation import SamplingConfig
from jaxalign.losses.ppo import KLControl
from jaxalign.metrics_log import get_logger
from jaxalign.rl import RewardSet, RolloutBatch, RolloutEngine, SourceContext
from jaxalign.rl.record import host_array
from jaxalign.rl.reward_model import ModelSource
from jaxalign.rl.teacher_forcing import completion_hidden
from jaxalign.sharding import batch_sharding, rules_from
from jaxalign.train_state import AlgoRun, Batch, TrainState

log = get_logger()


def data_kind(cfg: TrainConfig) -> str:
    return "prompt"


VALUE_FROZEN = "value"  # AlgoRun.frozen: a separate value model's frozen part (with LoRA), {FROZEN_PARAMS: ...}


def _value_model(cfg: TrainConfig, mesh: Mesh, tokenizer, hidden_size: int):
    """(graphdef or None, trained value params, frozen entries): a zero-initialised head
    ``{"kernel": [H, 1]}`` on the policy's decoder, or a ``ScoreModel`` from a folder. With
    ``lora:`` that model gets fresh adapters of the same settings (not ``lora.init_from``, which
    is the policy's) and its score head trains fully; its base is frozen."""
    source = cfg.ppo.resolved_value_model()
    if source == VALUE_ON_POLICY:
        kernel = jnp.zeros((hidden_size, 1), jnp.dtype(cfg.model.param_dtype))
        return None, {"kernel": common.on_mesh(kernel, mesh)}, {}
    spec = dataclasses.replace(cfg.model, path=source, config=None, trainable=None, freeze=None)
    lora = None if cfg.lora is None else dataclasses.replace(cfg.lora, init_from=None)
    _, graphdef, trained, frozen = build_trained(spec, cfg, mesh, "score", tokenizer, lora)
    return graphdef, trained, ({VALUE_FROZEN: frozen} if frozen else {})


def setup(cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int, sink=None) -> AlgoRun:
    ppo = cfg.ppo
    # The policy through the trainable-subset seam: with LoRA the adapters train and the
    # reference is the base with adapters off (the frozen part itself, no copy).
    policy = build_policy(cfg, mesh, tokenizer, reference=True, frozen_dtype=ppo.frozen_dtype)
    policy_graphdef = policy.graphdef
    frozen: dict[str, Any] = dict(policy.frozen)
    rules = rules_from(cfg.mesh)
    rows_by_split = rl_common.ExampleRowsBySplit(cfg, tokenizer)
    context = SourceContext(tokenizer=tokenizer, mesh=mesh, rules=rules, dtype=cfg.model.dtype,
                            frozen_dtype=ppo.frozen_dtype, sample_texts=rows_by_split.sample_prompts)
    rewards = RewardSet.build(ppo.reward_specs(), context, shaping=ppo.reward_shaping)
    model_sources = [source for source, role in zip(rewards.sources, rewards.roles)
                     if isinstance(source, ModelSource) and role == "train"]
    if model_sources:  # the (first) reward model's parameters, as before: frozen inputs of the steps
        frozen["reward"] = model_sources[0].params
    value_graphdef, value_params, value_frozen = _value_model(cfg, mesh, tokenizer, policy.hidden_size)
    frozen.update(value_frozen)

    # The schedule counts optimizer updates: num_ppo_epochs x num_mini_batches per step.
    extra = {"kl_coef": jnp.asarray(ppo.kl_coef, jnp.float32)}
    state, optimizer = common.init_train_state(cfg, mesh, {"policy": policy.params, "value": value_params},
                                               total_steps * ppo.updates_per_step, extra)
    control = KLControl(init_coef=ppo.kl_coef, target=ppo.target_kl, horizon=ppo.kl_horizon)
    sampling = SamplingConfig(max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature, top_k=ppo.top_k,
                              top_p=ppo.top_p, stop_token_ids=(int(tokenizer.eos_token_id),),
                              pad_token_id=int(tokenizer.pad_token_id or 0), slots=ppo.generation_slots)
    rows = batch_sharding(mesh)

    def whole_value(trained: Any, frozen: dict) -> Any:
        """The value parameters from the trained part and the step's ``frozen`` input."""
        return common.with_frozen(trained, frozen.get(VALUE_FROZEN, {}))

    def values(value_params: Any, hidden: jax.Array, *rows: jax.Array) -> jax.Array:
        """Per-token values ``[R, N]``: a head on the policy's hidden states, or the value model's scores.
        value_params: the whole head or model (``whole_value``). rows: prompt ids, prompt mask,
        completion ids, completion mask."""
        if value_graphdef is None:
            return pm.head_values(hidden, value_params)
        value_model = nnx.merge(value_graphdef, value_params)
        per_position = value_model.scores(*rl.sequences(*rows))[..., None]
        return completion_hidden(per_position, rows[0].shape[1])[..., 0]

    engine = RolloutEngine((policy_graphdef, policy.full(policy.params, frozen)), tokenizer, sampling,
                           rewards=rewards, reference_graphdef=policy.reference_graphdef, value_fn=values,
                           mesh=mesh, rules=rules)

    def forward(params: dict, batch: Batch, frozen: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The update's (reply log-probs, entropies, values) ``[B, N]``: the rollout's teacher-forced pass."""
        model = policy.model(params["policy"], frozen)
        rows = (batch["prompt_ids"], batch["prompt_mask"], batch["tokens"], batch["response_mask"])
        logps, entropy, hidden = rl.policy_pass(model, *rows, ppo.temperature)
        return logps, entropy, values(whole_value(params["value"], frozen), hidden, *rows)

    @jax.jit
    def prepare(record: RolloutBatch, kl_coef: jax.Array) -> Batch:
        """The update's batch from the rollout record: scores (after ``missing_eos_penalty``), per-token
        KL-penalised rewards, GAE advantages. Rows no reward source scored are dropped like padding rows."""
        example_mask = record.row_mask * record.reward_valid
        mask = record.completion_mask * example_mask[:, None]
        ended = ~record.truncated
        scores = record.rewards
        if ppo.missing_eos_penalty is not None:
            scores = jnp.where(ended | (example_mask == 0), scores, scores - ppo.missing_eos_penalty)
        out = {"prompt_ids": record.prompt_ids, "prompt_mask": record.prompt_mask, "example_mask": example_mask,
               "example_id": record.example_id, "tokens": record.completion_ids, "response_mask": mask,
               "scores": scores, "old_logps": record.logps * mask, "ref_logps": record.ref_logps * mask,
               "old_values": record.values * mask, "num_eos": ended.astype(jnp.float32) * example_mask}
        out = {**out, **pm.advantages(out, ppo, kl_coef)}
        # The trainer counts processed tokens from segment_ids: prompt + reply tokens of each row.
        out["segment_ids"] = jnp.concatenate([out["prompt_mask"], mask.astype(jnp.int32)], axis=1)
        return jax.lax.with_sharding_constraint(out, rows)

    def rollout(state: TrainState, batch: Batch, frozen: dict, split: str, index: int) -> tuple[Batch, dict[str, float]]:
        """Host-side: the rollout layer (sample, score, teacher-forced pass), then PPO's advantages.
        Returns the update's batch, seconds per phase, tokens generated and the rewards' metrics."""
        key = rl_common.rollout_key(state.rng, state.step, split, index)
        record = engine(policy.full(state.params["policy"], frozen), batch, key, rows=rows_by_split(split),
                        ref_params=policy.reference(frozen), value_params=whole_value(state.params["value"], frozen))
        started = time.monotonic()
        update_batch = prepare(record.batch, state.extra["kl_coef"])
        jax.block_until_ready(update_batch)
        timings = record.timings
        metrics = {"time/generation_s": timings["generation"], "time/scoring_s": timings["decoding"] + timings["scoring"],
                   "time/logps_s": timings["logps"] + time.monotonic() - started,
                   "tokens/generation": float(record.generated_tokens)}
        # Per-source means/stds (TRL's rewards/NAME/mean, /std), rows no source scored (dropped), the
        # gold reward logged beside the proxy (gold/reward) and shaping/ensemble metrics.
        metrics.update({name: value for name, value in record.metrics().items()
                        if name.startswith(("rewards/", "gold/"))})
        step = int(state.step) + 1  # the step this rollout trains
        if split == "train" and sink is not None and cfg.log.writes_completions(step):
            sink.write_table(step, "completions", record.completion_rows(step, _reply_means(update_batch)))
        return update_batch, metrics

    def train_step(state: TrainState, batch: Batch, frozen: dict) -> tuple[TrainState, dict]:
        # Each epoch visits the rows in a fresh order, num_mini_batches at a time.
        order = rl_common.minibatch_orders(state.rng, state.step, ppo.num_ppo_epochs, batch["prompt_ids"].shape[0],
                                           ppo.num_mini_batches, "ppo")
        update_keys = ("prompt_ids", "prompt_mask", "tokens", "response_mask", "old_logps", "old_values",
                       "advantages", "returns")
        rollout = {name: batch[name] for name in update_keys}

        def loss_fn(params: dict, minibatch: Batch):
            logps, entropy, values = forward(params, minibatch, frozen)
            return pm.minibatch_loss(logps, entropy, values, minibatch, ppo)

        params, opt_state, metrics = rl_common.scan_minibatch_updates(loss_fn, optimizer, state.params,
                                                                      state.opt_state, rollout, order, rows)
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

    def export(state: TrainState, path: str) -> list[str] | None:
        return policy.export(state.replace(params=state.params["policy"]), path)

    return AlgoRun(state=state, frozen=frozen, train_step=train_step, eval_step=eval_step, export=export,
                   rollout=rollout, updates_per_step=ppo.updates_per_step)


def _reply_means(batch: Batch) -> np.ndarray:
    """Each row's advantage averaged over its reply tokens ``[R]`` (the completions table's ``advantage``)."""
    advantages, mask = host_array(batch["advantages"]), host_array(batch["response_mask"])
    return (advantages * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)


@register_algorithm
class PPO(Algorithm):
    """``algo: ppo``: RLHF with a rollout hook (``ppo:`` section, ``ppo_config.PPOConfig``)."""

    name = "ppo"
    supports_lora = True  # builds its trained model through the trainable-subset seam
    sections = {"ppo": PPOConfig}

    def check_config(self, cfg: TrainConfig) -> None:
        cfg.ppo.check_for_run(cfg.data.batch_size)
        rl_common.check_sampling_run(cfg, "ppo", "ppo.num_mini_batches")

    def data_kind(self, cfg: TrainConfig) -> str:
        return data_kind(cfg)

    def setup(self, cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int, sink=None) -> AlgoRun:
        return setup(cfg, mesh, tokenizer, total_steps, sink)

    def plan_terms(self, cfg: TrainConfig, ctx) -> list:
        from jaxalign.algos import ppo_plan

        return ppo_plan.plan_terms(cfg, ctx)

    def plan_knobs(self, cfg: TrainConfig, plan) -> list:
        from jaxalign.algos import ppo_plan

        return ppo_plan.plan_knobs(cfg, plan)
