"""What ``jaxalign plan`` prints: the per-device breakdown of a ``MemoryPlan``
and the config changes ("knobs") that would lower it, each re-estimated."""

from __future__ import annotations

import dataclasses
from typing import Callable

from jaxalign.config import TrainConfig
from jaxalign.models.config import ModelConfig
from jaxalign.plan import GIB, MemoryPlan, _count, _holds_reference, estimate


@dataclasses.dataclass(frozen=True)
class Knob:
    """One config change and how to make it (``--set`` overrides, usually)."""

    description: str
    how: str
    total: int  # per-device bytes with the change


def _with(cfg: TrainConfig, **sections) -> TrainConfig:
    """``cfg`` with fields of its sections replaced, e.g. ``model={"remat": "full"}``."""
    changes = {}
    for name, fields in sections.items():
        current = getattr(cfg, name)
        changes[name] = dataclasses.replace(current, **fields) if isinstance(fields, dict) else fields
    return dataclasses.replace(cfg, **changes)


def _sets(*overrides: str) -> str:
    return " ".join(f"--set {item}" for item in overrides)


def _candidates(cfg: TrainConfig, plan: MemoryPlan) -> list[tuple[str, str, Callable[[], TrainConfig]]]:
    """(description, how, changed config) for every knob that applies to ``cfg``."""
    mesh, data = plan.mesh, cfg.data
    out: list[tuple[str, str, Callable[[], TrainConfig]]] = []
    if mesh["data"] > 1:
        fsdp = mesh["data"] * mesh["fsdp"]
        out.append((f"shard parameters and optimizer over all data-parallel devices (fsdp={fsdp})",
                    _sets("mesh.data=1", f"mesh.fsdp={fsdp}"),
                    lambda: _with(cfg, mesh={"data": 1, "fsdp": fsdp, "tensor": mesh["tensor"]})))
    for policy in ("dots", "full"):
        if cfg.model.remat != policy and not (cfg.model.remat == "full" and policy == "dots"):
            out.append((f"recompute activations in the backward (remat={policy})", _sets(f"model.remat={policy}"),
                        lambda policy=policy: _with(cfg, model={"remat": policy})))
    if _holds_reference(cfg):
        ref_dtype = cfg.ref_model.param_dtype if cfg.ref_model is not None else cfg.model.param_dtype
        if ref_dtype != "bfloat16":
            ref = dataclasses.replace(cfg.ref_model or cfg.model, param_dtype="bfloat16")
            how = (_sets(f"ref_model.path={ref.path}", "ref_model.param_dtype=bfloat16") if ref.path is not None
                   else "ref_model: a copy of the model section with param_dtype: bfloat16")
            out.append(("keep the frozen reference in bfloat16", how,
                        lambda: _with(cfg, ref_model=ref)))
        out.append(("precompute reference log-probs before training (no reference in memory)",
                    _sets("precompute_ref_logps=true"), lambda: _with(cfg, precompute_ref_logps=True)))
    if plan.workload.rows > 1:
        half = data.batch_size // 2
        accum = cfg.optim.grad_accum_steps * 2
        out.append((f"half the micro-batch, same effective batch (batch_size={half}, grad_accum_steps={accum})",
                    _sets(f"data.batch_size={half}", f"optim.grad_accum_steps={accum}"),
                    lambda: _with(cfg, data={"batch_size": half}, optim={"grad_accum_steps": accum})))
    if data.max_length >= 4 * data.pad_to_multiple:
        shorter = {"max_length": data.max_length // 2}
        overrides = [f"data.max_length={data.max_length // 2}"]
        if data.pack_length is not None:
            shorter["pack_length"] = data.pack_length // 2
            overrides.append(f"data.pack_length={data.pack_length // 2}")
        if data.max_prompt_length is not None:
            shorter["max_prompt_length"] = max(1, data.max_prompt_length // 2)
            overrides.append(f"data.max_prompt_length={shorter['max_prompt_length']}")
        out.append(("shorter sequences (packed rows halve with them)", _sets(*overrides),
                    lambda: _with(cfg, data=shorter)))
    return out


def knobs(cfg: TrainConfig, plan: MemoryPlan, architecture: ModelConfig | None = None) -> list[Knob]:
    """Changes that lower the per-device total, biggest saving first."""
    found = []
    for description, how, changed in _candidates(cfg, plan):
        total = estimate(changed(), plan.num_devices, architecture=architecture or plan.model).total
        if total < plan.total:
            found.append(Knob(description, how, total))
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
        f"worst-case micro-batch per device: {w.rows} row(s) x {w.length} tokens, {w.targets} target slots a row",
        "",
        f"{'per device':<24}{unit:>9}",
    ]
    for term in plan.terms:
        lines.append(f"  {term.name:<22}{term.bytes / scale:9.2f}  {term.detail}")
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
