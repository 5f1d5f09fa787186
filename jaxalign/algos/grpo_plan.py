"""GRPO's terms for ``jaxalign plan``: what one step (one generation batch) holds per device.

Held throughout: the policy (with ``lora:`` its adapters train and the base is
frozen), the AdamW moments of what trains, the frozen reference only when
``grpo.beta`` > 0 (with LoRA the base with adapters off, no copy), reward models
(in ``grpo.frozen_dtype``) and the rollout's arrays. The rollout has
``num_generations`` rows per prompt: the KV cache and the teacher-forced passes
cover every row, the prefill each prompt once. The update runs on one of
``steps_per_generation`` minibatches at a time. Shared pieces: ``rl_plan``.
"""

from __future__ import annotations

import dataclasses

from jaxalign.algos import rl_plan
from jaxalign.algos.rl_plan import RLModels
from jaxalign.config import TrainConfig
from jaxalign.data.packing import round_up
from jaxalign.plan import PlanContext, Term, Workload


def plan_terms(cfg: TrainConfig, ctx: PlanContext) -> list[Term]:
    grpo, data = cfg.grpo, cfg.data
    prompts = -(-data.batch_size // ctx.batch_shards)  # prompts per device (the trainer's rows: prompts)
    rows = prompts * grpo.num_generations
    prompt = round_up(data.resolved_max_prompt_length(), data.pad_to_multiple)
    new = grpo.max_completion_length
    rollout = Workload(rows=rows, length=prompt + new, targets=new)
    minibatch = dataclasses.replace(rollout, rows=-(-rows // grpo.steps_per_generation))
    models = RLModels.of(cfg, ctx.model, grpo, lambda i: f"grpo.reward_funcs[{i}]", reference=grpo.beta > 0)
    ctx.workload, ctx.param_count = minibatch, sum(s[1] for s in ctx.shards(models.policy, "causal_lm"))
    ctx.note = (f"rollout per device: {prompts} prompt(s) x {grpo.num_generations} replies x ({prompt} prompt + "
                f"{new} reply) tokens; update minibatch: {minibatch.rows} row(s)")
    parameters, trained = rl_plan.policy_parameter_term(ctx, models.policy)
    what = "policy adapters" if ctx.adapters else "policy"
    held = [parameters,
            Term("optimizer state", 2 * trained, f"AdamW mu and nu of the {what} in {models.policy.param_dtype}"),
            rl_plan.reference_term(cfg, ctx, models, grpo.frozen_dtype),
            *rl_plan.reward_model_terms(ctx, models, grpo.frozen_dtype),
            rl_plan.rollout_batch_term(rollout, prompt)]
    return (held + rl_plan.generation_terms(ctx, models.policy, rollout, prompt, prompts=prompts)
            + rl_plan.scoring_terms(ctx, models, rollout) + rl_plan.update_terms(ctx, models, minibatch, trained, what))


def plan_knobs(cfg: TrainConfig, plan) -> list:
    """GRPO's own knobs: more updates per generation batch (smaller minibatches, same rollout),
    shorter replies, the frozen models in bfloat16."""
    from jaxalign.plan_report import Candidate, set_flags, with_changes

    grpo, out = cfg.grpo, []
    more = grpo.steps_per_generation * 2
    if (cfg.data.batch_size * grpo.num_generations) % more == 0 and plan.workload.rows > 1:
        out.append(Candidate(f"smaller update minibatches, same rollout (steps_per_generation={more})",
                             set_flags(f"grpo.steps_per_generation={more}"),
                             lambda: with_changes(cfg, grpo={"steps_per_generation": more})))
    if grpo.max_completion_length >= 2:
        shorter = grpo.max_completion_length // 2
        out.append(Candidate(f"shorter replies (max_completion_length={shorter})",
                             set_flags(f"grpo.max_completion_length={shorter}"),
                             lambda: with_changes(cfg, grpo={"max_completion_length": shorter})))
    if grpo.frozen_dtype != "bfloat16" and (grpo.beta > 0 or any(s.kind == "model" for s in grpo.reward_specs())):
        out.append(Candidate("keep the frozen reference and reward models in bfloat16",
                             set_flags("grpo.frozen_dtype=bfloat16"),
                             lambda: with_changes(cfg, grpo={"frozen_dtype": "bfloat16"})))
    return out
