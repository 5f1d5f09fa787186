"""What ``jaxalign plan`` prints: the per-device breakdown of a ``MemoryPlan``
and the config changes ("knobs") that would lower it, each re-estimated."""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

from jaxalign.config import TrainConfig
from jaxalign.models.config import ModelConfig
from jaxalign.plan import GIB, MemoryPlan, _count, estimate


@dataclasses.dataclass(frozen=True)
class Knob:
    """One config change and how to make it (``--set`` overrides, usually)."""

    description: str
    how: str
    total: int  # per-device bytes with the change


class Candidate(NamedTuple):
    """A knob before it is re-estimated: what it does, how to ask for it, the changed config."""

    description: str
    how: str
    changed: Callable[[], TrainConfig]


def with_changes(cfg: TrainConfig, **sections) -> TrainConfig:
    """``cfg`` with fields of its sections replaced, e.g. ``model={"remat": "full"}``."""
    changes = {}
    for name, fields in sections.items():
        current = getattr(cfg, name)
        changes[name] = dataclasses.replace(current, **fields) if isinstance(fields, dict) else fields
    return dataclasses.replace(cfg, **changes)


def set_flags(*overrides: str) -> str:
    return " ".join(f"--set {item}" for item in overrides)


def _candidates(cfg: TrainConfig, plan: MemoryPlan) -> list[Candidate]:
    """Every knob that applies to ``cfg``: the generic ones (mesh, remat, sequence
    length) and the algorithm's own (``Algorithm.plan_knobs``)."""
    mesh, data = plan.mesh, cfg.data
    out: list[Candidate] = []
    if mesh["data"] > 1:
        fsdp = mesh["data"] * mesh["fsdp"]
        out.append(Candidate(f"shard parameters and optimizer over all data-parallel devices (fsdp={fsdp})",
                             set_flags("mesh.data=1", f"mesh.fsdp={fsdp}"),
                             lambda: with_changes(cfg, mesh={"data": 1, "fsdp": fsdp, "tensor": mesh["tensor"]})))
    for policy in ("dots", "full"):
        if cfg.model.remat != policy and not (cfg.model.remat == "full" and policy == "dots"):
            out.append(Candidate(f"recompute activations in the backward (remat={policy})",
                                 set_flags(f"model.remat={policy}"),
                                 lambda policy=policy: with_changes(cfg, model={"remat": policy})))
    out += _lora_candidates(cfg)
    out += cfg.algorithm.plan_knobs(cfg, plan)
    if data.max_length >= 4 * data.pad_to_multiple:
        shorter = {"max_length": data.max_length // 2}
        overrides = [f"data.max_length={data.max_length // 2}"]
        if data.pack_length is not None:
            shorter["pack_length"] = data.pack_length // 2
            overrides.append(f"data.pack_length={data.pack_length // 2}")
        if data.max_prompt_length is not None:
            shorter["max_prompt_length"] = max(1, data.max_prompt_length // 2)
            overrides.append(f"data.max_prompt_length={shorter['max_prompt_length']}")
        out.append(Candidate("shorter sequences (packed rows halve with them)", set_flags(*overrides),
                             lambda: with_changes(cfg, data=shorter)))
    return out


def _lora_candidates(cfg: TrainConfig) -> list[Candidate]:
    """Full fine-tuning: train LoRA adapters instead. LoRA on a float32 base: keep the base
    (and the compute) in bfloat16; the adapters stay in ``lora.param_dtype``."""
    from jaxalign.models.lora import LoraConfig

    if cfg.lora is None and cfg.algorithm.supports_lora:
        return [Candidate("train LoRA adapters instead of the whole model (rank 16 on every linear map; docs/lora.md)",
                          set_flags("lora.rank=16"), lambda: with_changes(cfg, lora=LoraConfig(rank=16)))]
    if cfg.lora is not None and "float32" in (cfg.model.param_dtype, cfg.model.dtype):
        return [Candidate("keep the frozen base and the compute in bfloat16 (the adapters stay in lora.param_dtype)",
                          set_flags("model.param_dtype=bfloat16", "model.dtype=bfloat16"),
                          lambda: with_changes(cfg, model={"param_dtype": "bfloat16", "dtype": "bfloat16"}))]
    return []


def halve_micro_batch(cfg: TrainConfig, plan: MemoryPlan) -> list[Candidate]:
    """Half the micro-batch with twice the gradient accumulation (same effective batch)."""
    if plan.workload.rows <= 1:
        return []
    half, accum = cfg.data.batch_size // 2, cfg.optim.grad_accum_steps * 2
    return [Candidate(f"half the micro-batch, same effective batch (batch_size={half}, grad_accum_steps={accum})",
                      set_flags(f"data.batch_size={half}", f"optim.grad_accum_steps={accum}"),
                      lambda: with_changes(cfg, data={"batch_size": half}, optim={"grad_accum_steps": accum}))]


def knobs(cfg: TrainConfig, plan: MemoryPlan, architecture: ModelConfig | None = None) -> list[Knob]:
    """Changes that lower the per-device total, biggest saving first."""
    found = []
    for candidate in _candidates(cfg, plan):
        try:
            changed = candidate.changed()
        except ValueError:  # a change this config cannot take (its checks refuse it): not a knob
            continue
        total = estimate(changed, plan.num_devices, architecture=architecture or plan.model).total
        if total < plan.total:
            found.append(Knob(candidate.description, candidate.how, total))
    return sorted(found, key=lambda knob: knob.total)


def _unit(plan: MemoryPlan) -> tuple[str, int]:
    """GiB for real models, MiB for the toy ones tests and quickstarts use."""
    return ("GiB", GIB) if max(plan.total, plan.hbm_bytes or 0) >= GIB else ("MiB", 1024**2)


def format_plan(plan: MemoryPlan, found: list[Knob], config_name: str = "") -> str:
    """The breakdown as text: one line per term, the total, the verdict, the knobs."""
    m, w = plan.model, plan.workload
    unit, scale = _unit(plan)
    mesh = " ".join(f"{axis}={size}" for axis, size in plan.mesh.items())
    lines = [
        f"jaxalign plan {config_name}: {plan.num_devices} devices, mesh {mesh}".replace("plan :", "plan:"),
        f"model: {m.model_type}, {_count(plan.param_count)} parameters ({m.num_layers} layers, hidden "
        f"{m.hidden_size}, vocab {m.vocab_size}); params {m.param_dtype}, compute {m.dtype}, remat {m.remat}",
        plan.note or f"worst-case micro-batch per device: {w.rows} row(s) x {w.length} tokens, "
                     f"{w.targets} target slots a row",
        "",
        f"{'per device':<24}{unit:>9}",
    ]
    phases = plan.phase_bytes()
    for term in plan.terms:
        if term.phase is None:
            lines.append(f"  {term.name:<22}{term.bytes / scale:9.2f}  {term.detail}")
    for phase, phase_total in phases.items():
        lines.append(f"  while {phase} ({phase_total / scale:.2f} {unit}):")
        for term in plan.terms:
            if term.phase == phase:
                lines.append(f"    {term.name:<22}{term.bytes / scale:7.2f}  {term.detail}")
    if phases:
        largest = max(phases, key=phases.get)
        lines.append(f"  {'total':<22}{plan.total / scale:9.2f}  held throughout + the largest phase ({largest})")
    else:
        lines.append(f"  {'total':<22}{plan.total / scale:9.2f}")
    if plan.hbm_bytes is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(f"  {verdict} in {plan.hbm_bytes / scale:.2f} {unit} per device ({plan.total / plan.hbm_bytes:.0%} used)")
    if found:
        lines += ["", "what would lower it (each change alone):"]
        for knob in found:
            verdict = ""
            if plan.hbm_bytes is not None:
                verdict = ", fits" if knob.total <= plan.hbm_bytes else ", still too big"
            lines.append(f"  {knob.total / scale:9.2f} {unit}{verdict}: {knob.description}")
            lines.append(f"  {'':13}{knob.how}")
    lines += ["", "Worst case (every row full); assumes XLA's memory-aware scheduling on TPU/GPU. Leave ~10%",
              "for XLA's own buffers. How each term is computed: docs/distributed.md#memory-planning"]
    return "\n".join(lines)
