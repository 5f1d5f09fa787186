"""Terms of ``jaxalign plan`` that the RL algorithms on the rollout layer share (PPO, GRPO).

An iteration holds the policy (through the trainable-subset seam: with ``lora:``
the adapters train and the base is frozen), its AdamW moments, the frozen
reference and reward models and the rollout's arrays throughout. Then three
phases that never overlap, so the plan counts the largest: **generation** (the
sampler's KV cache, the prompts' prefill and the decode step's logits),
**scoring** (the teacher-forced passes over the whole rollout, forward only, one
model at a time) and **update** (one minibatch: gradients, update temporaries,
activations kept for the backward).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from jaxalign.algos.ppo_config import VALUE_ON_POLICY
from jaxalign.config import ModelSpec, TrainConfig
from jaxalign.models.config import ModelConfig
from jaxalign.models.lora import is_adapter
from jaxalign.models.logps import chunk_tokens
from jaxalign.plan import PlanContext, Term, Workload, _count, read_model_config
from jaxalign.plan_activations import forward_working_set
from jaxalign.rl.teacher_forcing import LOGPS_CHUNK


def _architecture(spec: ModelSpec, what: str) -> ModelConfig:
    """The architecture of another model of the run (reference, reward, value) from its folder."""
    if spec.path is not None and not (Path(spec.path) / "config.json").is_file():
        raise FileNotFoundError(f"{what}: {Path(spec.path) / 'config.json'} not found: the planner reads every "
                                "model's architecture from its config.json")
    return read_model_config(spec)


@dataclasses.dataclass(frozen=True)
class RLModels:
    """The architectures of one RL run (``reference`` None without one; ``value`` None for a head on
    the policy or no value at all; ``rewards`` the reward-model sources, none for Python functions
    and verifiers)."""

    policy: ModelConfig
    reference: ModelConfig | None
    value: ModelConfig | None
    rewards: tuple[ModelConfig, ...]

    @classmethod
    def of(cls, cfg: TrainConfig, policy: ModelConfig, section: Any, reward_label: Callable[[int], str],
           reference: bool = True) -> "RLModels":
        """From the algorithm's config ``section`` (``reward_specs()``, ``frozen_dtype``; a value model
        when it has ``resolved_value_model``); ``reward_label(i)`` names the i-th reward source's option
        in errors; ``reference``: whether the run has a reference."""
        frozen = section.frozen_dtype
        rewards = tuple(
            _architecture(ModelSpec(path=spec.target), reward_label(i)).replace(dtype=cfg.model.dtype,
                                                                                param_dtype=frozen)
            for i, spec in enumerate(section.reward_specs()) if spec.kind == "model")
        value = None
        if hasattr(section, "resolved_value_model") and section.resolved_value_model() != VALUE_ON_POLICY:
            spec = dataclasses.replace(cfg.model, path=section.resolved_value_model(), config=None)
            value = _architecture(spec, f"{cfg.algo}.value_model").replace(
                dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat)
        ref = None
        if reference:
            ref = (policy if cfg.ref_model is None else _architecture(cfg.ref_model, "ref_model")).replace(
                dtype=cfg.model.dtype, param_dtype=frozen)
        return cls(policy, ref, value, rewards)


def policy_parameter_term(ctx: PlanContext, policy: ModelConfig) -> tuple[Term, int]:
    """The policy's parameters, and the bytes of what of it trains (with ``lora:`` the adapters)."""
    shards = ctx.shards(policy, "causal_lm")
    adapters = sum(s[1] for s in shards if is_adapter(s[0]))
    detail = f"policy, {_count(ctx.param_count - adapters)} parameters in {policy.param_dtype}"
    if adapters:
        detail += f" + {_count(adapters)} LoRA adapter parameters (rank {ctx.adapters.rank}) in {ctx.adapters.param_dtype}"
    return Term("parameters", ctx.bytes_of_shards(shards, policy.param_dtype), detail), ctx.trained_bytes(shards, policy)


def reference_term(cfg: TrainConfig, ctx: PlanContext, models: RLModels, frozen: str) -> Term:
    """The frozen reference: a ``ref_model`` in ``frozen``, or the starting policy (copies of what
    trains, the frozen part shared: with LoRA the base with adapters off, no copy); 0 without one."""
    if models.reference is None:
        return Term("frozen reference", 0, "none (no KL term)")
    if cfg.ref_model is not None:
        return ctx.frozen_model_term("frozen reference", models.reference, "causal_lm", frozen, "reference parameters")
    copied = ctx.starting_reference_bytes("causal_lm", frozen)
    if ctx.adapters is not None:
        detail = "the base with adapters off: the policy's frozen weights, " + (
            f"+ starting values of base parameters that train in {frozen}" if copied else "no copy")
    else:
        detail = f"starting values of the trained parameters in {frozen}" + (
            "; the frozen part is shared" if cfg.model.partial else "")
    return Term("frozen reference", copied, detail)


def reward_model_terms(ctx: PlanContext, models: RLModels, frozen: str) -> list[Term]:
    return [ctx.frozen_model_term("frozen reward model", reward, "score", frozen, "reward model")
            for reward in models.rewards]


def rollout_batch_term(rollout: Workload, prompt: int) -> Term:
    """Prompt ids and mask, segment ids and tokens (int32), and eight float32 ``[B, N]`` arrays (masks,
    log-probs, values or rewards, advantages, ...), held from the rollout to the update's end."""
    return Term("rollout batch", rollout.rows * (4 * rollout.length + 2 * 4 * prompt + 8 * 4 * rollout.targets),
                "the rollout's arrays (tokens, masks, log-probs, advantages)")


def generation_terms(ctx: PlanContext, policy: ModelConfig, rollout: Workload, prompt: int,
                     prompts: int | None = None) -> list[Term]:
    """The sampler: its KV cache (every rollout row), the prefill of ``prompts`` rows (default: one per
    rollout row; GRPO prefills each prompt once for its group) and the decode step's logits."""
    slots = rollout.length - 1  # the last sampled token is never fed back
    prefill = Workload(rows=rollout.rows if prompts is None else prompts, length=prompt, targets=1)
    decode_logits = 3 * rollout.rows * ctx.dims(policy).vocab * 4  # float32 logits, softmax, sampling temporaries
    return [
        Term("KV cache", ctx.kv_cache_bytes(policy, rollout.rows, slots),
             f"{rollout.rows} row(s) x {slots} slots x {policy.num_layers} layers in {policy.dtype}", "generation"),
        Term("generation working set", forward_working_set(ctx.dims(policy), prefill) + decode_logits,
             "the prompts' prefill and the decode step's logits", "generation"),
    ]


def scoring_terms(ctx: PlanContext, models: RLModels, rollout: Workload) -> list[Term]:
    """The teacher-forced passes over the whole rollout, forward only, one model at a time."""
    scored = [(model, "causal_lm") for model in (models.policy, models.reference) if model is not None]
    scored += [(model, "score") for model in (*models.rewards, models.value) if model is not None]
    chunk = chunk_tokens(rollout.rows, rollout.targets, LOGPS_CHUNK)  # target tokens over all rows
    passes = max(forward_working_set(ctx.dims(model), rollout) + _head_chunk(ctx, model, head, chunk)
                 for model, head in scored)
    outputs = 6 * rollout.rows * rollout.targets * 4
    names = "policy" + (", reference" if models.reference is not None else "") + (
        ", reward/value" if models.rewards or models.value is not None else "")
    return [Term("teacher-forced passes", passes + outputs,
                 f"one forward at a time ({names}) over the rollout", "scoring")]


def update_terms(ctx: PlanContext, models: RLModels, minibatch: Workload, trained: int, what: str) -> list[Term]:
    """One minibatch's update: gradients (of ``what``), update temporaries, activations kept for the
    backward (the policy's, its adapters', a separate value model's)."""
    terms = [
        Term("gradients", trained, what, "update"),
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
