"""GRPO and its family (Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++) on the rollout layer.

One trainer step = one generation batch:

1. ``rollout`` (host-side hook): ``num_generations`` replies to each of the batch's
   prompts (each prompt prefilled once, ``jaxalign.rl``), scored by the reward
   sources; with ``dynamic_sampling`` groups whose rewards are all equal are
   dropped and refilled from further training prompts. One teacher-forced pass
   stores the sampling policy's log-probs (and the reference's when ``beta`` > 0);
   the advantage estimator turns rewards into one advantage per reply. When the
   update is on-policy (``num_iterations`` and ``steps_per_generation`` 1) the
   policy's log-probs are not computed here: they equal the update's own, which
   stand in for them with their gradient stopped (ratio 1, as TRL); evaluation
   batches need no log-probs at all.
2. ``train_step`` (pure, jitted by the trainer): ``num_iterations`` passes over the
   rows, each split into ``steps_per_generation`` minibatches, one optimizer
   update each (the stored log-probs are the ratio's denominator), in one ``lax.scan``.

State: ``params = {"policy": ...}``. The policy is built through the trainable-subset
seam (``algos.policy.build_policy``): with ``lora:`` or ``model.trainable`` the state
holds only the trained part (the adapters), the rest is frozen. Frozen: that part and,
only when ``beta`` > 0, the reference (a ``ref_model`` folder, or the starting policy:
with LoRA the base with adapters off, sharing the frozen part; otherwise copies in
``grpo.frozen_dtype``). With ``beta`` 0 no reference exists. Export writes the policy
(with LoRA what ``lora.export`` says).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxalign import rl
from jaxalign.algos import common, grpo_advantages, grpo_losses, rl_common
from jaxalign.algos.grpo_config import GRPOConfig
from jaxalign.algos.grpo_sampling import DynamicSampler
from jaxalign.algos.policy import build_policy
from jaxalign.algos.registry import Algorithm, register_algorithm
from jaxalign.config import TrainConfig
from jaxalign.generation import SamplingConfig
from jaxalign.metrics_log import get_logger
from jaxalign.rl import RewardSet, RolloutBatch, RolloutEngine, SourceContext
from jaxalign.rl.record import host_array
from jaxalign.sharding import batch_sharding, rules_from
from jaxalign.train_state import AlgoRun, Batch, TrainState

log = get_logger()
UPDATE_KEYS = ("prompt_ids", "prompt_mask", "tokens", "loss_mask", "row_mask", "advantages")
OPTIONAL_UPDATE_KEYS = ("old_logps", "ref_logps")  # absent on-policy / with beta 0


def prepare(record: RolloutBatch, keep: jax.Array, cfg: GRPOConfig) -> Batch:
    """The update's batch from a scored, teacher-forced rollout ``[R = G x n rows]``.

    keep ``[R]``: rows dynamic sampling keeps (1) or only fills in (0). A row counts when it is real,
    kept and some reward source scored it; the others get advantage 0 and no loss. Without the
    rollout's log-probs (an on-policy update) the batch has no ``old_logps``."""
    n = cfg.num_generations
    valid = (record.row_mask > 0) & record.reward_valid & (keep > 0)
    estimator = grpo_advantages.get_estimator(cfg.advantage_estimator)
    advantages = estimator(record.rewards.reshape(-1, n), valid.reshape(-1, n), cfg).reshape(-1)
    advantages = jnp.where(valid, advantages, 0.0).astype(jnp.float32)
    row_mask = valid.astype(jnp.float32)
    mask = record.completion_mask * row_mask[:, None]
    loss_mask = mask * (~record.truncated)[:, None] if cfg.mask_truncated_completions else mask
    out = {"prompt_ids": record.prompt_ids, "prompt_mask": record.prompt_mask, "tokens": record.completion_ids,
           "loss_mask": loss_mask, "row_mask": row_mask, "advantages": advantages,
           "rewards": record.rewards, "scores": record.scores, "score_valid": record.score_valid.astype(jnp.float32),
           "example_mask": row_mask, "example_id": record.example_id,
           # The trainer counts processed tokens from segment_ids: prompt + reply tokens of each row.
           "segment_ids": jnp.concatenate([record.prompt_mask, mask.astype(jnp.int32)], axis=1)}
    if record.logps is not None:
        out["old_logps"] = record.logps * mask
    if record.ref_logps is not None:
        out["ref_logps"] = record.ref_logps * mask
    return out


def update_loss(logps: jax.Array, entropy: jax.Array, minibatch: Batch, batch_tokens: jax.Array,
                cfg: GRPOConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The configured policy loss on one minibatch (``logps``, ``entropy`` ``[B, N]`` from the
    current parameters) and its metrics, plus TRL's ``entropy`` (mean over counted tokens).
    Without ``old_logps`` (on-policy) the sampling policy's log-probs are ``logps`` themselves,
    gradient stopped."""
    old_logps = minibatch["old_logps"] if "old_logps" in minibatch else jax.lax.stop_gradient(logps)
    inputs = grpo_losses.PolicyLossInputs(
        logps=logps, old_logps=old_logps, ref_logps=minibatch.get("ref_logps"),
        advantages=minibatch["advantages"], mask=minibatch["loss_mask"], row_mask=minibatch["row_mask"],
        batch_tokens=batch_tokens)
    result = grpo_losses.get_policy_loss(cfg.loss_type)(inputs, cfg)
    loss, metrics = result if isinstance(result, tuple) else (result, {})
    mask = minibatch["loss_mask"]
    entropy_mean = jnp.sum(jnp.where(mask > 0, entropy, 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, {**metrics, "entropy": entropy_mean}


def setup(cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int, sink=None) -> AlgoRun:
    grpo = cfg.grpo
    # The policy through the trainable-subset seam: with LoRA the adapters train and the reference is the
    # base with adapters off (the frozen part itself, no copy). With beta 0 no reference is built at all.
    policy = build_policy(cfg, mesh, tokenizer, reference=grpo.beta > 0, frozen_dtype=grpo.frozen_dtype)
    frozen: dict[str, Any] = dict(policy.frozen)
    rules = rules_from(cfg.mesh)
    rows_by_split = rl_common.ExampleRowsBySplit(cfg, tokenizer)
    context = SourceContext(tokenizer=tokenizer, mesh=mesh, rules=rules, dtype=cfg.model.dtype,
                            frozen_dtype=grpo.frozen_dtype, sample_texts=rows_by_split.sample_prompts)
    rewards = RewardSet.build(grpo.reward_specs(), context)
    state, optimizer = common.init_train_state(cfg, mesh, {"policy": policy.params},
                                               total_steps * grpo.updates_per_step)
    sampling = SamplingConfig(max_new_tokens=grpo.max_completion_length, temperature=grpo.temperature,
                              top_k=grpo.top_k, top_p=grpo.top_p, stop_token_ids=(int(tokenizer.eos_token_id),),
                              pad_token_id=int(tokenizer.pad_token_id or 0), slots=grpo.generation_slots)
    engine = RolloutEngine((policy.graphdef, policy.full(policy.params, frozen)), tokenizer, sampling,
                           rewards=rewards, num_generations=grpo.num_generations,
                           reference_graphdef=policy.reference_graphdef, mesh=mesh, rules=rules)
    sampler = DynamicSampler(engine, grpo, cfg.data, tokenizer, rows_by_split("train"), mesh)
    rows = batch_sharding(mesh)
    prepare_jit = jax.jit(lambda record, keep: jax.lax.with_sharding_constraint(prepare(record, keep, grpo), rows))

    def rollout(state: TrainState, batch: Batch, frozen: dict, split: str, index: int) -> tuple[Batch, dict[str, float]]:
        """Host-side: sample and score (dynamic sampling on train batches when enabled), one teacher-forced
        pass, the advantages. Returns the update's batch and host metrics (rewards, lengths, timings)."""
        key = rl_common.rollout_key(state.rng, state.step, split, index)
        params = policy.full(state.params["policy"], frozen)
        scored, keep, sampling_metrics = sampler(params, batch, key, rows_by_split(split), dynamic=split == "train")
        # Log-probs only where the update reads them: the sampling policy's when it is off-policy, the
        # reference's for beta > 0; evaluation reads rewards alone.
        training = split == "train"
        record = engine.teacher_force(scored, params if training and not grpo.on_policy else None,
                                      ref_params=policy.reference(frozen) if training else None)
        started = time.monotonic()
        update_batch = prepare_jit(record.batch, keep)
        jax.block_until_ready(update_batch)
        timings = record.timings
        metrics = {"time/generation_s": timings["generation"], "time/scoring_s": timings["decoding"] + timings["scoring"],
                   "time/logps_s": timings["logps"] + time.monotonic() - started,
                   "tokens/generation": float(record.generated_tokens), **sampling_metrics}
        metrics.update({name: value for name, value in record.metrics().items() if np.isfinite(value)})
        metrics["rewards/unscored_groups"] = _unscored_groups(record)
        if metrics["rewards/unscored_groups"] and split == "train":
            log.warning("step %d: %d prompt group(s) had no reply any reward source scored (None for all); "
                        "they are left out of the update", int(state.step) + 1, metrics["rewards/unscored_groups"])
        step = int(state.step) + 1  # the step this rollout trains
        if split == "train" and sink is not None and cfg.log.writes_completions(step):
            table = record.completion_rows(step, host_array(update_batch["advantages"]))
            sink.write_table(step, "completions", table)  # the console sink prints a few rows
        return update_batch, metrics

    def forward(params: dict, minibatch: Batch, frozen: dict) -> tuple[jax.Array, jax.Array]:
        model = policy.model(params["policy"], frozen)
        logps, entropy, _ = rl.policy_pass(model, minibatch["prompt_ids"], minibatch["prompt_mask"],
                                           minibatch["tokens"], minibatch["loss_mask"], grpo.temperature)
        return logps, entropy

    def train_step(state: TrainState, batch: Batch, frozen: dict) -> tuple[TrainState, dict]:
        chunks = grpo.steps_per_generation
        # Each iteration visits the rows in a fresh order, steps_per_generation minibatches of them.
        order = rl_common.minibatch_orders(state.rng, state.step, grpo.num_iterations, batch["prompt_ids"].shape[0],
                                           chunks, "grpo", "steps_per_generation")
        batch_tokens = jnp.sum(batch["loss_mask"]) / chunks  # dapo's normaliser: the rollout's tokens per update
        rollout = {name: batch[name] for name in UPDATE_KEYS + OPTIONAL_UPDATE_KEYS if name in batch}

        def loss_fn(params: dict, minibatch: Batch):
            logps, entropy = forward(params, minibatch, frozen)
            return update_loss(logps, entropy, minibatch, batch_tokens, grpo)

        params, opt_state, metrics = rl_common.scan_minibatch_updates(loss_fn, optimizer, state.params,
                                                                      state.opt_state, rollout, order, rows)
        metrics["tokens/training"] = jnp.sum(batch["segment_ids"]) * grpo.num_iterations
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def eval_step(state: TrainState, batch: Batch, frozen: dict) -> dict:
        return {**reward_means(batch, rewards.names), "eval_weight": jnp.sum(batch["example_mask"])}

    def export(state: TrainState, path: str) -> list[str] | None:
        return policy.export(state.replace(params=state.params["policy"]), path)

    return AlgoRun(state=state, frozen=frozen, train_step=train_step, eval_step=eval_step, export=export,
                   rollout=rollout, updates_per_step=grpo.updates_per_step)


def reward_means(batch: Batch, names: tuple[str, ...]) -> dict[str, jax.Array]:
    """``reward`` (mean weighted total over scored rows) and ``rewards/NAME/mean`` (over the rows each
    source scored), for eval batches."""
    rows = batch["example_mask"]
    out = {"reward": jnp.sum(batch["rewards"] * rows) / jnp.maximum(jnp.sum(rows), 1.0)}
    for index, name in enumerate(names):
        valid = batch["score_valid"][:, index] * rows
        out[f"rewards/{name}/mean"] = jnp.sum(batch["scores"][:, index] * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    return out


def _unscored_groups(record: rl.Rollout) -> int:
    """Real prompt groups none of whose replies any source scored."""
    arrays = record.host()
    n = record.num_generations
    real = (arrays["row_mask"] > 0).reshape(-1, n).any(axis=1)
    scored = arrays["reward_valid"].reshape(-1, n).any(axis=1)
    return int(np.sum(real & ~scored))


@register_algorithm
class GRPO(Algorithm):
    """``algo: grpo``: group-relative policy optimisation and its family (``grpo:`` section,
    ``grpo_config.GRPOConfig``)."""

    name = "grpo"
    supports_lora = True  # builds its trained model through the trainable-subset seam
    sections = {"grpo": GRPOConfig}

    def check_config(self, cfg: TrainConfig) -> None:
        cfg.grpo.check_for_run(cfg.data.batch_size)
        rl_common.check_sampling_run(cfg, "grpo", "grpo.steps_per_generation")
        if cfg.ref_model is not None and cfg.grpo.beta == 0:
            raise ValueError("ref_model is set but grpo.beta is 0, so no reference would be used; set grpo.beta > 0 "
                             "or remove ref_model")

    def data_kind(self, cfg: TrainConfig) -> str:
        return "prompt"

    def setup(self, cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int, sink=None) -> AlgoRun:
        return setup(cfg, mesh, tokenizer, total_steps, sink)

    def plan_terms(self, cfg: TrainConfig, ctx) -> list:
        from jaxalign.algos import grpo_plan

        return grpo_plan.plan_terms(cfg, ctx)

    def plan_knobs(self, cfg: TrainConfig, plan) -> list:
        from jaxalign.algos import grpo_plan

        return grpo_plan.plan_knobs(cfg, plan)
