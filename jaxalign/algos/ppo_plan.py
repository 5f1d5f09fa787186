"""PPO's terms for ``jaxalign plan``: what one iteration holds per device.

Held throughout: the policy (with its value head, or a separate value model),
their AdamW moments, the frozen reference and reward model (in
``ppo.frozen_dtype``) and the rollout's arrays. Then three phases that never
overlap, so the plan counts the largest: **generation** (the sampler's KV
cache for ``data.batch_size`` prompts x (prompt + ``max_new_tokens``) slots, the
prefill and the decode step's logits), **scoring** (the teacher-forced passes
of policy, reference and reward model over the whole rollout, forward only)
and **update** (one minibatch of ``batch_size / num_mini_batches`` rows:
gradients, update temporaries, activations kept for the backward). The pieces
GRPO shares are in ``rl_plan``.
"""

from __future__ import annotations

import dataclasses

from jaxalign.algos import rl_plan
from jaxalign.algos.rl_plan import RLModels
from jaxalign.config import TrainConfig
from jaxalign.data.packing import round_up
from jaxalign.models.lora import is_adapter
from jaxalign.plan import DTYPE_BYTES, PlanContext, Term, Workload, parameter_shards


def plan_terms(cfg: TrainConfig, ctx: PlanContext) -> list[Term]:
    ppo, data = cfg.ppo, cfg.data
    rows = -(-data.batch_size // ctx.batch_shards)  # prompts per device
    prompt = round_up(data.resolved_max_prompt_length(), data.pad_to_multiple)
    rollout = Workload(rows=rows, length=prompt + ppo.max_new_tokens, targets=ppo.max_new_tokens)
    minibatch = dataclasses.replace(rollout, rows=-(-rows // ppo.num_mini_batches))
    models = RLModels.of(cfg, ctx.model, ppo,
                         lambda i: "ppo.reward_model" if ppo.rewards is None else f"ppo.rewards[{i}]")
    ctx.workload, ctx.param_count = minibatch, sum(s[1] for s in ctx.shards(models.policy, "causal_lm"))
    ctx.note = (f"rollout per device: {rows} prompt(s) x ({prompt} prompt + {ppo.max_new_tokens} reply) tokens; "
                f"update minibatch: {minibatch.rows} row(s)")
    held, trained = _held_terms(cfg, ctx, models, rollout, prompt)
    return (held + rl_plan.generation_terms(ctx, models.policy, rollout, prompt)
            + rl_plan.scoring_terms(ctx, models, rollout)
            + rl_plan.update_terms(ctx, models, minibatch, trained, "policy and value"))


def _held_terms(cfg: TrainConfig, ctx: PlanContext, models: RLModels, rollout: Workload,
                prompt: int) -> tuple[list[Term], int]:
    """What the iteration holds throughout, and the bytes of what trains (policy + value).
    With ``lora:`` the policy's adapters train and its base is frozen (``algos.policy``); a value
    model from a folder gets adapters of the same settings, its score head trained fully."""
    policy, frozen = models.policy, cfg.ppo.frozen_dtype
    parameters, policy_trained = rl_plan.policy_parameter_term(ctx, policy)
    terms = [parameters]
    if models.value is None:
        value_bytes = value_trained = policy.hidden_size * DTYPE_BYTES[policy.param_dtype]
        terms.append(Term("value model", value_bytes, "a value head on the policy's decoder"))
    else:
        value_shards = parameter_shards(models.value, "score", ctx.mesh, ctx.rules, ctx.adapters)
        value_bytes = ctx.bytes_of_shards(value_shards, models.value.param_dtype)
        value_trained = ctx.bytes_of_shards(
            [s for s in value_shards if ctx.adapters is None or is_adapter(s[0]) or s[0][0] == "score"],
            models.value.param_dtype)
        terms.append(Term("value model", value_bytes, f"from {cfg.ppo.resolved_value_model()}, in "
                          f"{models.value.param_dtype}" + (" with LoRA adapters" if ctx.adapters else "")))
    trained = policy_trained + value_trained
    what = "policy adapters and value" if ctx.adapters else "policy and value"
    terms.append(Term("optimizer state", 2 * trained, f"AdamW mu and nu of {what} in {policy.param_dtype}"))
    terms.append(rl_plan.reference_term(cfg, ctx, models, frozen))
    terms += rl_plan.reward_model_terms(ctx, models, frozen)
    terms.append(rl_plan.rollout_batch_term(rollout, prompt))
    return terms, trained


def plan_knobs(cfg: TrainConfig, plan) -> list:
    """PPO's own knobs: more minibatches (no gradient accumulation in PPO), shorter replies,
    the frozen models in bfloat16."""
    from jaxalign.plan_report import Candidate, set_flags, with_changes

    ppo, out = cfg.ppo, []
    more = ppo.num_mini_batches * 2
    if cfg.data.batch_size % more == 0 and plan.workload.rows > 1:
        out.append(Candidate(f"smaller update minibatches, same rollout (num_mini_batches={more})",
                             set_flags(f"ppo.num_mini_batches={more}"),
                             lambda: with_changes(cfg, ppo={"num_mini_batches": more})))
    if ppo.max_new_tokens >= 2:
        shorter = ppo.max_new_tokens // 2
        out.append(Candidate(f"shorter replies (max_new_tokens={shorter})", set_flags(f"ppo.max_new_tokens={shorter}"),
                             lambda: with_changes(cfg, ppo={"max_new_tokens": shorter})))
    if ppo.frozen_dtype != "bfloat16":
        out.append(Candidate("keep the frozen reference and reward model in bfloat16",
                             set_flags("ppo.frozen_dtype=bfloat16"),
                             lambda: with_changes(cfg, ppo={"frozen_dtype": "bfloat16"})))
    return out
