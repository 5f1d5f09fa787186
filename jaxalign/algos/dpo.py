"""The DPO family: a policy trained on preference pairs (or KTO's unpaired rows)
against a frozen reference, with any registered loss (``jaxalign.losses``).

Chosen and rejected go through the model in one forward over packed rows that
store the prompt once. The reference is, by default, a frozen copy of the
starting policy (with LoRA, the base with adapters off: no copy of the
weights); ``ref_model`` names another checkpoint; with
``precompute_ref_logps`` its log-probs are computed in one pass before
training, saved in the run directory, and the reference leaves memory. The
policy and its reference come from ``algos.policy.build_policy``, as for PPO.
Reference-free losses (SimPO, ORPO, CPO) hold no reference at all.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxalign import distributed
from jaxalign.algos import common, reference_cache
from jaxalign.algos.policy import build_policy
from jaxalign.algos.registry import Algorithm, register_algorithm
from jaxalign.batch import target_counts
from jaxalign.config import TrainConfig
from jaxalign.data import build_pipeline
from jaxalign.losses import LossConfig, PreferenceInputs, UnpairedInputs, build_loss
from jaxalign.metrics_log import get_logger
from jaxalign.sharding import batch_divisor, replicated, shard_batch
from jaxalign.train_state import AlgoRun, Batch, TrainState

log = get_logger()


def data_kind(cfg: TrainConfig) -> str:
    return "unpaired" if cfg.loss.kind == "unpaired" else "preference"


def _flat(values: jax.Array | None, branch: int) -> jax.Array | None:
    return None if values is None else values[..., branch].reshape(-1)


def loss_inputs(batch: Batch, policy: dict[str, jax.Array], reference: jax.Array | None, kind: str):
    """The loss bundle from per-example sums ``[R, K, 2]`` (policy and reference)."""
    counts = target_counts(batch)
    mask = common.flat_examples(batch)
    logits_mean = policy["logits_mean_sums"] / jnp.maximum(counts, 1.0)
    if kind == "unpaired":
        return UnpairedInputs(
            policy_logps=_flat(policy["sums"], 0), lengths=_flat(counts, 0), label=batch["label"].reshape(-1),
            mask=mask, ref_logps=_flat(reference, 0), policy_kl_logps=_flat(policy["sums"], 1),
            ref_kl_logps=_flat(reference, 1), logits_mean=_flat(logits_mean, 0), batch=batch,
        )
    return PreferenceInputs(
        policy_chosen_logps=_flat(policy["sums"], 0), policy_rejected_logps=_flat(policy["sums"], 1),
        chosen_lengths=_flat(counts, 0), rejected_lengths=_flat(counts, 1), mask=mask,
        ref_chosen_logps=_flat(reference, 0), ref_rejected_logps=_flat(reference, 1),
        chosen_logits_mean=_flat(logits_mean, 0), rejected_logits_mean=_flat(logits_mean, 1), batch=batch,
    )


def setup(cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int) -> AlgoRun:
    # The reference: ref_model, or the starting policy (with LoRA: the base, adapters off, no copy).
    # Precomputed, it is used once before training and shares the policy's arrays meanwhile.
    policy = build_policy(cfg, mesh, tokenizer, reference=cfg.loss.needs_reference,
                          copy_reference=not cfg.precompute_ref_logps)
    kind = cfg.loss.kind
    frozen: dict[str, Any] = dict(policy.frozen)
    if cfg.loss.needs_reference and cfg.precompute_ref_logps:
        tables = precomputed_reference(cfg, mesh, tokenizer, policy.reference_graphdef, policy.reference(frozen))
        frozen = {**policy.without_reference(frozen), **tables}
    state, optimizer = common.init_train_state(cfg, mesh, policy.params, total_steps)
    loss = build_loss(cfg.loss)

    def reference_sums(frozen: dict, batch: Batch, split: str) -> jax.Array | None:
        if not cfg.loss.needs_reference:
            return None
        if cfg.precompute_ref_logps:
            return frozen[f"ref_{split}"][batch["example_id"]]
        reference = nnx.merge(policy.reference_graphdef, policy.reference(frozen))
        return jax.lax.stop_gradient(common.completion_logps(reference, batch)["sums"])

    def loss_fn(params, batch: Batch, frozen: dict, split: str, dropout_key=None):
        policy_out = common.completion_logps(policy.model(params, frozen, dropout_key), batch, with_logits_mean=True)
        inputs = loss_inputs(batch, policy_out, reference_sums(frozen, batch, split), kind)
        return loss(inputs).result()

    def train_step(state: TrainState, batch: Batch, frozen: dict):
        key = common.dropout_key(state, cfg.lora)
        return common.gradient_step(state, optimizer, lambda p, b: loss_fn(p, b, frozen, "train", key), batch)

    def eval_step(state: TrainState, batch: Batch, frozen: dict):
        loss_value, metrics = loss_fn(state.params, batch, frozen, "eval")
        return {**metrics, "loss": loss_value, "eval_weight": common.num_examples(batch)}

    return AlgoRun(state=state, frozen=frozen, train_step=train_step, eval_step=eval_step, export=policy.export)


def precomputed_reference(cfg: TrainConfig, mesh: Mesh, tokenizer, ref_graphdef, ref_params) -> dict[str, jax.Array]:
    """Reference log-prob sums for every example of the train and eval splits,
    ``{"ref_train": [N_train, 2], "ref_eval": [N_eval, 2]}``, looked up in the
    step by ``example_id``. Saved as ``<run_dir>/ref_logps_<split>.npy`` (by
    process 0) with a fingerprint of what determines it (``reference_cache``)
    and reused when every process finds it with the current fingerprint (a
    resumed run skips the pass; a changed model, tokenizer or data recomputes). With several processes each reads its shard of the split and the
    sums come back replicated, so every process fills the same whole table."""
    kind = data_kind(cfg)
    sums_fn = jax.jit(
        lambda params, batch: (common.completion_logps(nnx.merge(ref_graphdef, params), batch)["sums"],
                               batch["example_id"], batch["example_mask"]),
        out_shardings=replicated(mesh))
    tables = {}
    for split in ("train", "eval"):
        cache = Path(cfg.run_dir) / f"ref_logps_{split}.npy"
        pipeline = build_pipeline(
            dataclasses.replace(cfg.data, shuffle=False), tokenizer, split=split, kind=kind,
            row_multiple=max(batch_divisor(mesh) // jax.process_count(), 1), ordered=True,
            process_index=jax.process_index(), process_count=jax.process_count(),
            shape_agreement=distributed.agree_on_shape if jax.process_count() > 1 else None,
        )
        if pipeline is None:
            tables[f"ref_{split}"] = _replicated(np.zeros((1, 2), np.float32), mesh)
            continue
        fingerprint = reference_cache.fingerprint(cfg, tokenizer, pipeline, split)
        table, stale = reference_cache.load(cache, fingerprint, pipeline.num_examples)
        # The pass is collective: all processes reuse the cache or none does.
        if distributed.all_processes(table is not None):
            log.info("reference log-probs for %s: reusing %s", split, cache)
        else:
            if cache.exists():
                log.warning("reference log-probs for %s: recomputing %s: %s", split, cache, stale)
            table = _reference_pass(pipeline, sums_fn, ref_params, mesh)
            if jax.process_index() == 0:
                reference_cache.save(cache, table, fingerprint)
            log.info("reference log-probs for %s: %d examples -> %s", split, pipeline.num_examples, cache)
        tables[f"ref_{split}"] = _replicated(table, mesh)
    return tables


def _replicated(table: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host table (the same on every process) as a global array replicated over ``mesh``."""
    return jax.make_array_from_callback(table.shape, replicated(mesh), lambda index: table[index])


def _reference_pass(pipeline, sums_fn, ref_params, mesh: Mesh) -> np.ndarray:
    table = np.zeros((pipeline.num_examples, 2), np.float32)
    for host_batch in pipeline.iterator():
        sums, example_ids, example_mask = jax.device_get(sums_fn(ref_params, shard_batch(host_batch, mesh)))
        used = np.asarray(example_mask) > 0
        table[np.asarray(example_ids)[used]] = np.asarray(sums)[used]
    return table


@register_algorithm
class DPO(Algorithm):
    """``algo: dpo``: the DPO family and KTO (``loss:`` section) against a frozen reference
    (``ref_model``, or a copy of the starting policy; ``precompute_ref_logps``)."""

    name = "dpo"
    supports_lora = True  # builds its trained model through the trainable-subset seam
    sections = {"loss": LossConfig}

    def check_config(self, cfg: TrainConfig) -> None:
        loss = cfg.loss
        if loss.kind not in ("pair", "unpaired"):
            raise ValueError(f"algo dpo trains a policy with a preference loss, got the reward-model loss "
                             f"'{loss.name}'; use algo: rm to train a reward model")
        if not loss.needs_reference:
            if cfg.precompute_ref_logps:
                raise ValueError(f"precompute_ref_logps: loss '{loss.name}' is reference-free, so there are "
                                 "no reference log-probs to precompute; remove precompute_ref_logps")
            if cfg.ref_model is not None:
                raise ValueError(f"ref_model is set but loss '{loss.name}' is reference-free; remove ref_model")
        common.check_soft_labels(cfg)

    def data_kind(self, cfg: TrainConfig) -> str:
        return data_kind(cfg)

    def setup(self, cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int, sink=None) -> AlgoRun:
        return setup(cfg, mesh, tokenizer, total_steps)

    def plan_terms(self, cfg: TrainConfig, ctx) -> list:
        from jaxalign.plan import Term

        terms = super().plan_terms(cfg, ctx)
        if _holds_reference(cfg) and cfg.ref_model is not None:
            dtype = _reference_dtype(cfg)
            terms.append(ctx.frozen_model_term("frozen reference", ctx.model.replace(param_dtype=dtype), "causal_lm",
                                               dtype, "reference parameters"))
        elif _holds_reference(cfg):  # the starting policy: its frozen part is shared
            copied = ctx.starting_reference_bytes("causal_lm")
            if cfg.lora is not None:
                detail = "the base with adapters off: the policy's frozen weights, " + (
                    "+ starting values of base parameters that train" if copied else "no copy")
            else:
                detail = f"starting values of the trained parameters in {cfg.model.param_dtype}" + (
                    "; the frozen part is shared" if cfg.model.partial else "")
            terms.append(Term("frozen reference", copied, detail))
        return terms

    def plan_knobs(self, cfg: TrainConfig, plan) -> list:
        from jaxalign.plan_report import Candidate, set_flags, with_changes

        out = []
        if _holds_reference(cfg):
            if _reference_dtype(cfg) != "bfloat16":
                ref = dataclasses.replace(cfg.ref_model or cfg.model, param_dtype="bfloat16")
                how = (set_flags(f"ref_model.path={ref.path}", "ref_model.param_dtype=bfloat16") if ref.path is not None
                       else "ref_model: a copy of the model section with param_dtype: bfloat16")
                out.append(Candidate("keep the frozen reference in bfloat16", how,
                                     lambda: with_changes(cfg, ref_model=ref)))
            out.append(Candidate("precompute reference log-probs before training (no reference in memory)",
                                 set_flags("precompute_ref_logps=true"),
                                 lambda: with_changes(cfg, precompute_ref_logps=True)))
        return out + super().plan_knobs(cfg, plan)


def _holds_reference(cfg: TrainConfig) -> bool:
    """Whether the train step holds reference parameters (not reference-free, not precomputed)."""
    return cfg.loss.needs_reference and not cfg.precompute_ref_logps


def _reference_dtype(cfg: TrainConfig) -> str:
    return cfg.ref_model.param_dtype if cfg.ref_model is not None else cfg.model.param_dtype
