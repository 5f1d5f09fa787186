"""PPO's terms for ``jaxalign plan``: what one iteration holds per device.

Held throughout: the policy (with its value head, or a separate value model),
their AdamW moments, the frozen reference and reward model (in
``ppo.frozen_dtype``) and the rollout's arrays. Then three phases that never
overlap, so the plan counts the largest: **generation** (the sampler's KV
cache for ``data.batch_size`` prompts x (prompt + ``max_new_tokens``) slots, the
prefill and the decode step's logits), **scoring** (the teacher-forced passes
of policy, reference and reward model over the whole rollout, forward only)
and **update** (one minibatch of ``batch_size / num_mini_batches`` rows:
gradients, update temporaries, activations kept for the backward).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxalign.algos.ppo_config import VALUE_ON_POLICY
from jaxalign.algos.ppo_math import LOGPS_CHUNK
from jaxalign.config import ModelSpec, TrainConfig
from jaxalign.data.packing import round_up
from jaxalign.models.config import ModelConfig
from jaxalign.plan import DTYPE_BYTES, PlanContext, Term, Workload, _count, forward_working_set, read_model_config


def _architecture(spec: ModelSpec, what: str) -> ModelConfig:
    """The architecture of another model of the run (reference, reward, value) from its folder."""
    if spec.path is not None and not (Path(spec.path) / "config.json").is_file():
        raise FileNotFoundError(f"{what}: {Path(spec.path) / 'config.json'} not found: the planner reads every "
                                "model's architecture from its config.json")
    return read_model_config(spec)


def plan_terms(cfg: TrainConfig, ctx: PlanContext) -> list[Term]:
    ppo, data = cfg.ppo, cfg.data
    rows = -(-data.batch_size // ctx.batch_shards)  # prompts per device
    prompt = round_up(data.resolved_max_prompt_length(), data.pad_to_multiple)
    length = prompt + ppo.max_new_tokens
    minibatch = Workload(rows=-(-rows // ppo.num_mini_batches), length=length, targets=ppo.max_new_tokens)
    rollout = Workload(rows=rows, length=length, targets=ppo.max_new_tokens)
    policy = ctx.model
    policy_bytes = ctx.parameter_bytes(policy, "causal_lm")
    ctx.workload, ctx.param_count = minibatch, sum(s[1] for s in ctx.shards(policy, "causal_lm"))
    ctx.note = (f"rollout per device: {rows} prompt(s) x ({prompt} prompt + {ppo.max_new_tokens} reply) tokens; "
                f"update minibatch: {minibatch.rows} row(s)")

    frozen_dtype = ppo.frozen_dtype
    reward = None
    if ppo.reward_model is not None:
        reward = _architecture(ModelSpec(path=ppo.reward_model), "ppo.reward_model").replace(
            dtype=cfg.model.dtype, param_dtype=frozen_dtype)
    terms = [Term("parameters", policy_bytes, f"policy, {_count(ctx.param_count)} parameters in {policy.param_dtype}")]
    value_source = ppo.resolved_value_model()
    value_model = None
    if value_source == VALUE_ON_POLICY:
        value_bytes = policy.hidden_size * DTYPE_BYTES[policy.param_dtype]
        terms.append(Term("value model", value_bytes, "a value head on the policy's decoder"))
    else:
        spec = dataclasses.replace(cfg.model, path=value_source, config=None)
        value_model = _architecture(spec, "ppo.value_model").replace(
            dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat)
        value_bytes = ctx.parameter_bytes(value_model, "score")
        terms.append(Term("value model", value_bytes, f"from {value_source}, in {value_model.param_dtype}"))
    trained = policy_bytes + value_bytes
    terms.append(Term("optimizer state", 2 * trained, f"AdamW mu and nu of policy and value in {policy.param_dtype}"))

    reference = (policy if cfg.ref_model is None else _architecture(cfg.ref_model, "ref_model"))
    reference = reference.replace(dtype=cfg.model.dtype, param_dtype=frozen_dtype)
    terms.append(ctx.frozen_model_term("frozen reference", reference, "causal_lm", frozen_dtype, "reference parameters"))
    if reward is not None:
        terms.append(ctx.frozen_model_term("frozen reward model", reward, "score", frozen_dtype, "reward model"))
    # prompt ids and mask, segment ids and tokens (int32), and seven float32 [B, N] arrays (masks, log-probs, values,
    # advantages, returns, ...), held from the rollout to the update's end.
    terms.append(Term("rollout batch", rows * (4 * length + 2 * 4 * prompt + 8 * 4 * ppo.max_new_tokens),
                      "the rollout's arrays (tokens, masks, log-probs, advantages)"))

    dims = ctx.dims(policy)
    slots = prompt + ppo.max_new_tokens - 1
    terms.append(Term("KV cache", ctx.kv_cache_bytes(policy, rows, slots),
                      f"{rows} row(s) x {slots} slots x {policy.num_layers} layers in {policy.dtype}", "generation"))
    prefill = Workload(rows=rows, length=prompt, targets=1)
    decode_logits = 3 * rows * dims.vocab * 4  # float32 logits, their softmax and the sampling temporaries
    terms.append(Term("generation working set", forward_working_set(dims, prefill) + decode_logits,
                      "the prompts' prefill and the decode step's logits", "generation"))

    scored = [(policy, "causal_lm"), (reference, "causal_lm")] + ([(reward, "score")] if reward is not None else [])
    if value_model is not None:
        scored.append((value_model, "score"))
    chunk = min(LOGPS_CHUNK, ppo.max_new_tokens)
    passes = max(forward_working_set(ctx.dims(model), rollout) + _head_chunk(ctx, model, head, rows, chunk)
                 for model, head in scored)
    outputs = 6 * rows * ppo.max_new_tokens * 4
    terms.append(Term("teacher-forced passes", passes + outputs,
                      "one forward at a time (policy, reference, reward/value) over the rollout", "scoring"))

    terms += [
        Term("gradients", trained, "policy and value", "update"),
        Term("update temporaries", trained, "reduced/clipped gradients before the in-place update", "update"),
    ]
    terms += ctx.gathered_weights(policy, "causal_lm", "update")
    terms += ctx.activation_terms("causal_lm", minibatch, policy, "update")
    if value_model is not None:
        terms += ctx.gathered_weights(value_model, "score", "update")
        terms += ctx.activation_terms("score", minibatch, value_model, "update", label="value ")
    return terms


def _head_chunk(ctx: PlanContext, model: ModelConfig, head: str, rows: int, chunk: int) -> int:
    """The chunked vocabulary projection's float32 logits (and softmax) of a causal LM."""
    return 2 * rows * chunk * ctx.dims(model).vocab * 4 if head == "causal_lm" else 0


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
