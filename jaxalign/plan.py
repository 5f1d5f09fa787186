"""Memory planning: per-device bytes of one train step, before any device is touched.

``estimate(cfg, num_devices)`` reads the architecture (``model.path``'s
config.json or ``model.config``), lays the parameters out on the configured
mesh with the same logical rules the trainer uses (``jaxalign.sharding``), and
adds up, per device:

parameters          every parameter's shard, in ``model.param_dtype``
optimizer state     AdamW's two moments, shaped and typed like the parameters
                    (fp32 when the parameters are); plus accumulated gradients
                    when ``optim.grad_accum_steps > 1``
gradients           one parameter-sized buffer
update temporaries  one more parameter-sized buffer: XLA materialises the
                    reduced / clipped gradients before the in-place update
gathered weights    fsdp > 1 only: decoder weights all-gathered over ``fsdp``
                    (compute dtype); all layers without remat (the forward's
                    copy is reused by the backward), two layers with remat
activations         see ``activation_terms``
frozen models       the DPO reference (unless reference-free or precomputed),
                    sharded like the policy, in ``ref_model.param_dtype``; a
                    reference that is the starting policy shares its frozen part
                    and copies only what trains (with LoRA: nothing but base
                    parameters trained fully)

With ``lora:`` the trained model's parameters include its adapters (in
``lora.param_dtype``), and the optimizer state, gradients and update
temporaries count only the adapters (and a score head, and ``model.trainable``).

Those are the default terms (``PlanContext.trained_model_terms``); each
algorithm composes its own in ``Algorithm.plan_terms`` (PPO: policy, value,
reference, reward model, the sampler's KV cache, phases).

The batch is the worst case the packer can produce: every example of the
device's share fills a row of ``pack_length`` tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any, Mapping

from jax.sharding import AbstractMesh

from jaxalign.config import ModelSpec, TrainConfig
from jaxalign.data.shapes import largest_shape
from jaxalign.models.config import ModelConfig
from jaxalign.models.lora import AdapterSpec, is_adapter, trained_patterns
from jaxalign.models.trainable import compile_patterns, is_trained
from jaxalign.plan_activations import ActivationDims, backward_working_set, head_working_set, saved_per_layer
from jaxalign.sharding import MESH_AXES, _resolve_axis_sizes, logical_to_spec, rules_from

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one device processes in one micro-step (worst case)."""

    rows: int  # packed rows per device
    length: int  # tokens per row (L)
    targets: int  # completion-token slots per row (C)

    @property
    def tokens(self) -> int:
        return self.rows * self.length


@dataclasses.dataclass(frozen=True)
class Term:
    """One line of the plan. Terms without a ``phase`` are held throughout the step;
    terms of a phase (RL: ``"generation"``, ``"update"``) are held only while that
    phase runs, so the plan's total takes the largest phase, not their sum."""

    name: str
    bytes: int
    detail: str
    phase: str | None = None


@dataclasses.dataclass
class MemoryPlan:
    """Per-device memory of one train step, term by term."""

    num_devices: int
    mesh: dict[str, int]
    workload: Workload
    param_count: int
    model: ModelConfig
    terms: list[Term]
    hbm_bytes: int | None = None
    note: str | None = None

    @property
    def total(self) -> int:
        """Bytes held throughout plus the largest phase's."""
        held = sum(term.bytes for term in self.terms if term.phase is None)
        return held + max(self.phase_bytes().values(), default=0)

    def phase_bytes(self) -> dict[str, int]:
        """``{phase: bytes}`` of the phased terms, in the order they first appear."""
        phases: dict[str, int] = {}
        for term in self.terms:
            if term.phase is not None:
                phases[term.phase] = phases.get(term.phase, 0) + term.bytes
        return phases

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.total <= self.hbm_bytes

    def bytes_of(self, prefix: str) -> int:
        """Bytes of the terms whose name starts with ``prefix`` (e.g. "activations")."""
        return sum(term.bytes for term in self.terms if term.name.startswith(prefix))


# ---------------------------------------------------------------- architecture


def read_model_config(spec: ModelSpec, config_json: str | Path | None = None, vocab_size: int | None = None) -> ModelConfig:
    """The architecture of ``spec``: ``config_json`` if given, else ``spec.path``'s
    config.json, else ``spec.config`` (``vocab_size`` fills a missing vocabulary)."""
    if config_json is not None or spec.path is not None:
        path = Path(config_json) if config_json is not None else Path(spec.path) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: the planner reads the architecture from the model's config.json "
                "(pass --model-config PATH to use a copy)")
        hf_config = json.loads(path.read_text())
    else:
        hf_config = dict(spec.config or {})
    if "vocab_size" not in hf_config and vocab_size is not None:
        hf_config["vocab_size"] = vocab_size
    return ModelConfig.from_hf(hf_config, dtype=spec.dtype, param_dtype=spec.param_dtype, remat=spec.remat)


def abstract_mesh(mesh_sizes: Mapping[str, int]) -> AbstractMesh:
    return AbstractMesh(tuple(mesh_sizes[a] for a in MESH_AXES), MESH_AXES)


@functools.lru_cache(maxsize=16)
def _parameter_layout(model_config: ModelConfig, head: str,
                      adapters: AdapterSpec | None = None) -> tuple[tuple[tuple, tuple[int, ...], tuple], ...]:
    """``(path, shape, logical axes)`` of every parameter (LoRA ``adapters`` included), from an
    abstract model (no device memory). Cached: the knobs re-plan the same architecture often."""
    from jaxalign.models.init import abstract_model  # local: NNX graph building is only needed here
    from jaxalign.models.partition import logical_axes

    _, variables = abstract_model(model_config, head, adapters)
    return tuple((path, tuple(v.get_value().shape), logical_axes(v)) for path, v in variables.items())


def parameter_shards(model_config: ModelConfig, head: str, mesh: AbstractMesh, rules: Mapping[str, Any],
                     adapters: AdapterSpec | None = None) -> list[tuple[tuple, int, int, int]]:
    """``(path, elements, elements per device, elements per device gathered over fsdp)`` of every parameter."""
    shapes_only = model_config.replace(dtype="float32", param_dtype="float32", remat="none")
    shards = []
    for path, shape, axes in _parameter_layout(shapes_only, head, adapters):
        spec = logical_to_spec(axes, shape, mesh, rules)
        divisors = [_axes_size(entry, mesh) for entry in spec] + [1] * (len(shape) - len(spec))
        no_fsdp = [_axes_size(entry, mesh, skip="fsdp") for entry in spec] + [1] * (len(shape) - len(spec))
        size = math.prod(shape)
        shards.append((path, size, size // math.prod(divisors), size // math.prod(no_fsdp)))
    return shards


def _axes_size(entry: Any, mesh: AbstractMesh, skip: str | None = None) -> int:
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(mesh.shape[a] for a in axes if a != skip)


def split(size: int, logical: str, mesh: AbstractMesh, rules: Mapping[str, Any]) -> int:
    """Per-device extent of a dimension named ``logical`` (as the parameters shard it)."""
    spec = logical_to_spec((logical,), (size,), mesh, rules)
    return size // _axes_size(spec[0] if len(spec) else None, mesh)


# ---------------------------------------------------------------- workload


def worst_case_workload(cfg: TrainConfig, mesh_sizes: Mapping[str, int], kind: str) -> Workload:
    """Rows, row length and target slots per device of the largest batch the packer
    can make: the top of the shape ladder (``jaxalign.data.shapes.largest_shape``),
    for one device's share of the batch."""
    data = cfg.data
    paired = kind in ("preference", "reward", "unpaired", "listwise")  # unpaired rows carry KTO's mismatched second branch
    shards = mesh_sizes["data"] * mesh_sizes["fsdp"]
    pack_length = data.resolved_pack_length(paired=kind in ("preference", "reward", "listwise"))
    rows, length, width, _ = largest_shape(
        slots=-(-data.batch_size // shards), pack_length=pack_length,
        longest_example=(2 if paired else 1) * data.max_length, pad_to_multiple=data.pad_to_multiple)
    return Workload(rows=rows, length=length, targets=width // rows)


# ------------------------------------ activation widths (their arithmetic: plan_activations.py)


def _dims(model_config: ModelConfig, mesh: AbstractMesh, rules: Mapping[str, Any]) -> ActivationDims:
    heads = split(model_config.num_heads, "heads", mesh, rules)
    kv_heads = split(model_config.num_kv_heads, "kv_heads", mesh, rules)
    return ActivationDims(
        hidden=model_config.hidden_size, q=heads * model_config.head_dim, kv=kv_heads * model_config.head_dim,
        mlp=split(model_config.intermediate_size, "mlp", mesh, rules), heads=heads,
        vocab=split(model_config.vocab_size, "vocab", mesh, rules),
        compute_bytes=DTYPE_BYTES[model_config.dtype], gated=model_config.family == "llama",
        qk_norm=model_config.qk_norm,
    )


# ---------------------------------------------------------------- the estimate


@dataclasses.dataclass
class PlanContext:
    """What an algorithm's ``plan_terms`` builds its terms from: the config, the mesh
    and the policy's architecture (``model``, with ``cfg.model``'s dtypes and remat),
    and helpers that count a model's parameters, its training and its batch.

    ``trained_model_terms`` records the first trained model's workload and
    parameter count for the plan's header.
    """

    cfg: TrainConfig
    num_devices: int
    mesh_sizes: dict[str, int]
    mesh: AbstractMesh
    rules: Mapping[str, Any]
    model: ModelConfig
    workload: Workload | None = None
    param_count: int | None = None
    note: str | None = None  # an algorithm's own line for the plan's header (PPO: the rollout's shape)
    adapters: AdapterSpec | None = None  # cfg.lora's adapters on ``model`` (resolved by ``estimate``)

    def dims(self, model_config: ModelConfig | None = None) -> ActivationDims:
        return _dims(model_config or self.model, self.mesh, self.rules)

    @property
    def batch_shards(self) -> int:
        """Devices the rows of a batch are split over (``data`` x ``fsdp``)."""
        return self.mesh_sizes["data"] * self.mesh_sizes["fsdp"]

    def kv_cache_bytes(self, model_config: ModelConfig, rows: int, slots: int) -> int:
        """Per-device bytes of a sampler's key/value cache: ``rows`` rows (per device) of
        ``slots`` slots in every layer, kv heads split like the parameters', compute dtype."""
        kv_heads = split(model_config.num_kv_heads, "kv_heads", self.mesh, self.rules)
        return (2 * model_config.num_layers * rows * kv_heads * model_config.head_dim * slots
                * DTYPE_BYTES[model_config.dtype])

    def worst_case_workload(self, kind: str) -> Workload:
        return worst_case_workload(self.cfg, self.mesh_sizes, kind)

    def shards(self, model_config: ModelConfig, head: str) -> list[tuple[tuple, int, int, int]]:
        """Every parameter's shard; ``cfg.model``'s own architecture (``model``, the trained
        model) carries the LoRA adapters when ``lora:`` is set."""
        adapters = self.adapters if model_config is self.model else None
        return parameter_shards(model_config, head, self.mesh, self.rules, adapters)

    def parameter_bytes(self, model_config: ModelConfig, head: str, dtype: str | None = None) -> int:
        """Per-device bytes of ``model_config``'s parameters with ``head``, in ``dtype``
        (default: its ``param_dtype``; adapters in ``lora.param_dtype``)."""
        return self.bytes_of_shards(self.shards(model_config, head), dtype or model_config.param_dtype)

    def bytes_of_shards(self, shards: list[tuple[tuple, int, int, int]], dtype: str) -> int:
        """Per-device bytes of ``shards``: ``dtype``, adapters in their own dtype."""
        adapter_dtype = self.adapters.param_dtype if self.adapters is not None else dtype
        return sum(s[2] * DTYPE_BYTES[adapter_dtype if is_adapter(s[0]) else dtype] for s in shards)

    def frozen_model_term(self, name: str, model_config: ModelConfig, head: str, dtype: str, detail: str) -> Term:
        """A model held for inference only (a reference, a reward model), sharded like the policy."""
        return Term(name, self.parameter_bytes(model_config, head, dtype), f"{detail} in {dtype}")

    def trained_model_terms(self, head: str, workload: Workload, model_config: ModelConfig | None = None) -> list[Term]:
        """Parameters, AdamW state, gradients, update temporaries, fsdp-gathered weights,
        activations and the batch of one model trained with ``head`` on ``workload``."""
        model_config = model_config or self.model
        shards = self.shards(model_config, head)
        params = self.bytes_of_shards(shards, model_config.param_dtype)
        adapter_count = sum(s[1] for s in shards if is_adapter(s[0]))
        param_count = sum(s[1] for s in shards) - adapter_count
        if self.workload is None:
            self.workload, self.param_count = workload, param_count
        trained, share = self.trained_bytes(shards, model_config), ""
        dtype = model_config.param_dtype
        detail = f"{_count(param_count)} parameters in {dtype}"
        if adapter_count:
            dtype = self.adapters.param_dtype
            detail += f" + {_count(adapter_count)} LoRA adapter parameters (rank {self.adapters.rank}) in {dtype}"
            share = f" of the trained {trained / params:.1%} (adapters{' + score head' if head == 'score' else ''})"
        elif trained != params:
            share = f" of the trained {trained / params:.0%} (model.trainable/freeze)"
        terms = [
            Term("parameters", params, detail),
            Term("optimizer state", 2 * trained, f"AdamW mu and nu in {dtype}{share}"),
        ]
        accumulation = self.cfg.optim.grad_accum_steps
        if accumulation > 1:
            terms.append(Term("optimizer state", trained, f"accumulated gradients (grad_accum_steps={accumulation})"))
        terms += [
            Term("gradients", trained, "one buffer the size of the trained parameters"),
            Term("update temporaries", trained, "reduced/clipped gradients before the in-place update"),
        ]
        terms += self.gathered_weights(model_config, head)
        terms += self.activation_terms(head, workload, model_config)
        if adapter_count:
            terms += self.adapter_activation_terms(shards, workload, model_config)
        terms.append(Term("batch", workload.rows * (4 * workload.length + 4 * workload.targets) * 4,
                          "packed input arrays"))
        return terms

    def trained_bytes(self, shards: list[tuple[tuple, int, int, int]], model_config: ModelConfig,
                      dtype: str | None = None) -> int:
        """Per-device bytes (in ``dtype``, default ``param_dtype``) of the parameters that train: all
        of them, except for ``cfg.model``'s own architecture with ``model.trainable``/``model.freeze``
        or ``lora:`` set."""
        spec = self.cfg.model
        paths = ["/".join(str(key) for key in s[0]) for s in shards]
        patterns = spec.trainable if self.adapters is None else trained_patterns(spec.trainable, paths)
        trainable = compile_patterns(patterns, "model.trainable")
        freeze = compile_patterns(spec.freeze, "model.freeze")
        selected = [s for s, path in zip(shards, paths) if model_config is not self.model or
                    is_trained(path, trainable, freeze)]
        return self.bytes_of_shards(selected, dtype or model_config.param_dtype)

    def starting_reference_bytes(self, head: str, dtype: str | None = None) -> int:
        """Per-device bytes a reference that is the starting policy (``common.starting_reference``)
        adds: copies of the trained parameters; adapters are left out (the base with adapters
        off is the reference) and the frozen part is shared. ``dtype``: the copies' (PPO's
        ``frozen_dtype``; default the model's ``param_dtype``)."""
        shards = [s for s in self.shards(self.model, head) if not is_adapter(s[0])]
        return self.trained_bytes(shards, self.model, dtype)

    def activation_terms(self, head: str, workload: Workload, model_config: ModelConfig | None = None,
                         phase: str | None = None, label: str = "") -> list[Term]:
        """Saved activations, the backward's working set and the head's, for one
        forward + backward of ``model_config`` over ``workload`` (names prefixed by ``label``)."""
        model_config = model_config or self.model
        dims, remat = _dims(model_config, self.mesh, self.rules), model_config.remat
        layers = model_config.num_layers
        return [
            Term(f"{label}activations: saved", saved_per_layer(dims, workload, remat) * layers,
                 f"kept for the backward by {layers} layers (remat={remat})", phase),
            Term(f"{label}activations: backward", backward_working_set(dims, workload, remat),
                 "the layer being differentiated", phase),
            Term(f"{label}activations: other", head_working_set(dims, workload, head),
                 "embeddings, attention mask, output head", phase),
        ]

    def adapter_activation_terms(self, shards: list[tuple[tuple, int, int, int]], workload: Workload,
                                 model_config: ModelConfig, phase: str | None = None) -> list[Term]:
        """What LoRA adds to the saved activations (measured against XLA): each adapter's
        output ``[tokens, out]`` (the two matmul outputs stay apart for the backward) and,
        with dropout, its dropped input ``[tokens, in]`` and keep mask (kept as 32-bit random
        bits). Every layer keeps them
        unless remat is "full", which keeps one layer's."""
        rank, compute = self.adapters.rank, DTYPE_BYTES[model_config.dtype]
        outs = sum(s[3] // rank for s in shards if s[0][-1] == "lora_b")  # gathered: activations are not fsdp-split
        ins = sum(s[3] // rank for s in shards if s[0][-1] == "lora_a")
        per_token = outs * compute + (ins * (compute + 4) if self.adapters.dropout > 0 else 0)
        layers = model_config.num_layers
        kept = layers if model_config.remat != "full" else 1
        dropout = f", dropped inputs (dropout {self.adapters.dropout})" if self.adapters.dropout > 0 else ""
        return [Term("activations: LoRA", workload.tokens * per_token * kept // layers,
                     f"adapter outputs{dropout}, {'every layer' if kept == layers else 'one layer'}", phase)]

    def gathered_weights(self, model_config: ModelConfig, head: str, phase: str | None = None) -> list[Term]:
        """fsdp > 1: the all-gathered copies of ``model_config``'s weights. fsdp = 1 with weights
        stored in another dtype than the compute dtype (a bfloat16 base computing in float32):
        their converted copies, which the backward keeps in the same way. None otherwise."""
        converted = model_config.param_dtype != model_config.dtype
        if self.mesh_sizes["fsdp"] <= 1 and not converted:
            return []
        shards = [s for s in self.shards(model_config, head) if not is_adapter(s[0])]
        term = dataclasses.replace(_gathered_weights(shards, model_config), phase=phase)
        if self.mesh_sizes["fsdp"] <= 1:
            term = dataclasses.replace(term, name="converted weights", detail=term.detail.replace(
                "fsdp all-gathers", f"{model_config.param_dtype} weights converted to {model_config.dtype}"))
        return [term]


def estimate(
    cfg: TrainConfig,
    num_devices: int,
    hbm_gib: float | None = None,
    *,
    architecture: ModelConfig | None = None,
) -> MemoryPlan:
    """Per-device memory of ``cfg``'s train step on ``num_devices`` devices.

    ``architecture`` replaces the one read from ``cfg.model``
    (``read_model_config``); dtypes and remat always come from ``cfg.model``.
    The terms are the algorithm's (``Algorithm.plan_terms``).
    """
    mesh_sizes = dict(zip(MESH_AXES, _resolve_axis_sizes(cfg.mesh, num_devices)))
    spec = cfg.model
    model_config = (architecture or read_model_config(spec)).replace(
        dtype=spec.dtype, param_dtype=spec.param_dtype, remat=spec.remat)
    ctx = PlanContext(cfg, num_devices, mesh_sizes, abstract_mesh(mesh_sizes), rules_from(cfg.mesh), model_config)
    if cfg.lora is not None:
        from jaxalign.models.init import resolve_lora

        ctx.adapters = resolve_lora(cfg.lora, model_config, cfg.algorithm.head, spec.path)
    terms = cfg.algorithm.plan_terms(cfg, ctx)
    if ctx.workload is None:  # an algorithm that trains no model through trained_model_terms
        ctx.workload, ctx.param_count = Workload(0, 0, 0), sum(s[1] for s in ctx.shards(model_config, "causal_lm"))
    return MemoryPlan(
        num_devices=num_devices, mesh=mesh_sizes, workload=ctx.workload, param_count=ctx.param_count,
        model=model_config, terms=terms, hbm_bytes=None if hbm_gib is None else int(hbm_gib * GIB), note=ctx.note,
    )


def _count(value: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)


def _gathered_weights(shards: list[tuple[tuple, int, int, int]], model_config: ModelConfig) -> Term:
    """fsdp all-gathers, in the compute dtype: every layer's weights without remat
    (the backward reuses the forward's gathered copy), two layers' with remat
    (re-gathered inside each recomputed layer, one prefetched), plus the
    embeddings and head, which live outside the layers."""
    layers = model_config.num_layers
    at_once = layers if model_config.remat == "none" else min(2, layers)
    in_layers = sum(s[3] for s in shards if "layers" in s[0])
    outside = sum(s[3] for s in shards if "layers" not in s[0])
    elements = in_layers * at_once // layers + outside
    return Term("gathered weights", elements * DTYPE_BYTES[model_config.dtype],
                f"fsdp all-gathers of {'every layer' if at_once == layers else f'{at_once} layers'} + embeddings")
