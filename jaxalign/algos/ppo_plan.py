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
from jaxalign.config import ModelSpec, TrainConfig
from jaxalign.data.packing import round_up
from jaxalign.models.config import ModelConfig
from jaxalign.models.lora import is_adapter
from jaxalign.plan import (DTYPE_BYTES, PlanContext, Term, Workload, _count, forward_working_set, parameter_shards,
                           read_model_config)
from jaxalign.rl.teacher_forcing import LOGPS_CHUNK


def _architecture(spec: ModelSpec, what: str) -> ModelConfig:
    """The architecture of another model of the run (reference, reward, value) from its folder."""
    if spec.path is not None and not (Path(spec.path) / "config.json").is_file():
        raise FileNotFoundError(f"{what}: {Path(spec.path) / 'config.json'} not found: the planner reads every "
                                "model's architecture from its config.json")
    return read_model_config(spec)


@dataclasses.dataclass(frozen=True)
class _Models:
    """The architectures of one PPO run (``value`` None for a head on the policy; ``rewards``
    the reward-model sources, none for Python functions and verifiers)."""

    policy: ModelConfig
    reference: ModelConfig
    value: ModelConfig | None  # None: a value head on the policy
    rewards: tuple[ModelConfig, ...]

    @classmethod
    def of(cls, cfg: TrainConfig, policy: ModelConfig) -> "_Models":
        ppo, frozen = cfg.ppo, cfg.ppo.frozen_dtype
        rewards = tuple(
            _architecture(ModelSpec(path=spec.target), "ppo.reward_model" if ppo.rewards is None else f"ppo.rewards[{i}]")
            .replace(dtype=cfg.model.dtype, param_dtype=frozen)
            for i, spec in enumerate(ppo.reward_specs()) if spec.kind == "model")
        value = None
        if ppo.resolved_value_model() != VALUE_ON_POLICY:
            spec = dataclasses.replace(cfg.model, path=ppo.resolved_value_model(), config=None)
            value = _architecture(spec, "ppo.value_model").replace(
                dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat)
        reference = policy if cfg.ref_model is None else _architecture(cfg.ref_model, "ref_model")
        return cls(policy, reference.replace(dtype=cfg.model.dtype, param_dtype=frozen), value, rewards)


def plan_terms(cfg: TrainConfig, ctx: PlanContext) -> list[Term]:
    ppo, data = cfg.ppo, cfg.data
    rows = -(-data.batch_size // ctx.batch_shards)  # prompts per device
    prompt = round_up(data.resolved_max_prompt_length(), data.pad_to_multiple)
    rollout = Workload(rows=rows, length=prompt + ppo.max_new_tokens, targets=ppo.max_new_tokens)
    minibatch = dataclasses.replace(rollout, rows=-(-rows // ppo.num_mini_batches))
    models = _Models.of(cfg, ctx.model)
    ctx.workload, ctx.param_count = minibatch, sum(s[1] for s in ctx.shards(models.policy, "causal_lm"))
    ctx.note = (f"rollout per device: {rows} prompt(s) x ({prompt} prompt + {ppo.max_new_tokens} reply) tokens; "
                f"update minibatch: {minibatch.rows} row(s)")
    held, trained = _held_terms(cfg, ctx, models, rollout, prompt)
    return (held + _generation_terms(ctx, models.policy, rollout, prompt)
            + _scoring_terms(ctx, models, rollout) + _update_terms(ctx, models, minibatch, trained))


def _held_terms(cfg: TrainConfig, ctx: PlanContext, models: _Models, rollout: Workload,
                prompt: int) -> tuple[list[Term], int]:
    """What the iteration holds throughout, and the bytes of what trains (policy + value).
    With ``lora:`` the policy's adapters train and its base is frozen (``algos.policy``); a value
    model from a folder gets adapters of the same settings, its score head trained fully."""
    policy, frozen = models.policy, cfg.ppo.frozen_dtype
    shards = ctx.shards(policy, "causal_lm")
    policy_bytes = ctx.bytes_of_shards(shards, policy.param_dtype)
    policy_trained = ctx.trained_bytes(shards, policy)
    adapters = sum(s[1] for s in shards if is_adapter(s[0]))
    detail = f"policy, {_count(ctx.param_count - adapters)} parameters in {policy.param_dtype}"
    if adapters:
        detail += f" + {_count(adapters)} LoRA adapter parameters (rank {ctx.adapters.rank}) in {ctx.adapters.param_dtype}"
    terms = [Term("parameters", policy_bytes, detail)]
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
    if cfg.ref_model is not None:
        terms.append(ctx.frozen_model_term("frozen reference", models.reference, "causal_lm", frozen,
                                           "reference parameters"))
    else:  # the starting policy (common.starting_reference): copies of what trains, the frozen part shared
        copied = ctx.starting_reference_bytes("causal_lm", frozen)
        if ctx.adapters is not None:
            detail = "the base with adapters off: the policy's frozen weights, " + (
                f"+ starting values of base parameters that train in {frozen}" if copied else "no copy")
        else:
            detail = f"starting values of the trained parameters in {frozen}" + (
                "; the frozen part is shared" if cfg.model.partial else "")
        terms.append(Term("frozen reference", copied, detail))
    for reward in models.rewards:
        terms.append(ctx.frozen_model_term("frozen reward model", reward, "score", frozen, "reward model"))
    # prompt ids and mask, segment ids and tokens (int32), and seven float32 [B, N] arrays (masks, log-probs,
    # values, advantages, returns, ...), held from the rollout to the update's end.
    reply = rollout.targets
    terms.append(Term("rollout batch", rollout.rows * (4 * rollout.length + 2 * 4 * prompt + 8 * 4 * reply),
                      "the rollout's arrays (tokens, masks, log-probs, advantages)"))
    return terms, trained


def _generation_terms(ctx: PlanContext, policy: ModelConfig, rollout: Workload, prompt: int) -> list[Term]:
    """The sampler: its KV cache, the prompts' prefill and the decode step's logits."""
    slots = rollout.length - 1  # the last sampled token is never fed back
    prefill = Workload(rows=rollout.rows, length=prompt, targets=1)
    decode_logits = 3 * rollout.rows * ctx.dims(policy).vocab * 4  # float32 logits, softmax, sampling temporaries
    return [
        Term("KV cache", ctx.kv_cache_bytes(policy, rollout.rows, slots),
             f"{rollout.rows} row(s) x {slots} slots x {policy.num_layers} layers in {policy.dtype}", "generation"),
        Term("generation working set", forward_working_set(ctx.dims(policy), prefill) + decode_logits,
             "the prompts' prefill and the decode step's logits", "generation"),
    ]


def _scoring_terms(ctx: PlanContext, models: _Models, rollout: Workload) -> list[Term]:
    """The teacher-forced passes over the whole rollout, forward only, one model at a time."""
    scored = [(models.policy, "causal_lm"), (models.reference, "causal_lm")]
    scored += [(model, "score") for model in (*models.rewards, models.value) if model is not None]
    chunk = min(LOGPS_CHUNK, rollout.rows * rollout.targets)  # target tokens over all rows
    passes = max(forward_working_set(ctx.dims(model), rollout) + _head_chunk(ctx, model, head, chunk)
                 for model, head in scored)
    outputs = 6 * rollout.rows * rollout.targets * 4
    return [Term("teacher-forced passes", passes + outputs,
                 "one forward at a time (policy, reference, reward/value) over the rollout", "scoring")]


def _update_terms(ctx: PlanContext, models: _Models, minibatch: Workload, trained: int) -> list[Term]:
    """One minibatch's update: gradients, update temporaries, activations kept for the backward."""
    terms = [
        Term("gradients", trained, "policy and value", "update"),
        Term("update temporaries", trained, "reduced/clipped gradients before the in-place update", "update"),
    ]
    terms += ctx.gathered_weights(models.policy, "causal_lm", "update")
    terms += ctx.activation_terms("causal_lm", minibatch, models.policy, "update")
    if ctx.adapters is not None:
        terms += ctx.adapter_activation_terms(ctx.shards(models.policy, "causal_lm"), minibatch, models.policy, "update")
    if models.value is not None:
        terms += ctx.gathered_weights(models.value, "score", "update")
        terms += ctx.activation_terms("score", minibatch, models.value, "update", label="value ")
    return terms


def _head_chunk(ctx: PlanContext, model: ModelConfig, head: str, chunk: int) -> int:
    """The chunked vocabulary projection's float32 logits (and softmax) of a causal LM."""
    return 2 * chunk * ctx.dims(model).vocab * 4 if head == "causal_lm" else 0


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
