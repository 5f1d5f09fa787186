"""LoRA adapters on the decoder's linear maps, and the ``lora:`` config section.

An adapter adds ``scale * dropout(x) @ A @ B`` to a ``Linear``'s output
(``jaxalign.models.layers.Linear.add_adapter``): ``A`` ``[*in, rank]`` starts
uniform in ``+-1/sqrt(fan_in)``, ``B`` ``[rank, *out]`` at zero, so an adapted
model starts equal to its base. ``scale`` is ``alpha / rank``, or
``alpha / sqrt(rank)`` with ``rslora``. Adapters are added when the model is
built (``add_adapters``, also under ``nnx.eval_shape`` for the abstract model),
so loading, sharding, the planner and every algorithm see them as ordinary
parameters at ``<module>/lora_a`` and ``<module>/lora_b``.

They meet the rest through the trainable-subset seam
(``jaxalign.models.trainable``): ``trained_patterns`` makes the adapters (and
a score head, which is new) the trained part; the base is the frozen part, an
input of the step that is never donated or checkpointed. The base with
adapters off (the DPO reference) is the base graph definition
(``base_graphdef``) merged with that same frozen part: no second copy.

Why our own and not qwix (docs/lora.md): qwix adds adapters by intercepting
``dot_general``/``einsum`` while one traced method runs and creating the
parameters on that first call; our models are called through several methods
(``hidden_states``, ``logits_from_hidden``, the KV-cache decode), inside
``jax.checkpoint`` around ``nnx.split``/``merge``, and the weight reaches the
matmul after a reshape, which qwix's lookup of the weight by identity does not
follow. Here the adapter is a parameter of the layer from construction on.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxalign.models.layers import Linear, LoraKey

ADAPTER_KEYS = ("lora_a", "lora_b")
ADAPTER_PARAM = r".*/lora_[ab]"  # the adapters' parameter paths (a regex for model.trainable)
SCORE_HEAD = r"score/.*"  # a score head (reward or value model) is new, so it trains fully
PRESETS = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all-linear": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
EXPORTS = ("adapter", "merged", "both")
DEFAULT_RANK, DEFAULT_ALPHA_PER_RANK, DEFAULT_TARGETS = 8, 2.0, ("all-linear",)
_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass
class LoraConfig:
    """The ``lora:`` section: train low-rank adapters instead of the whole model.

    rank, alpha: the adapter's rank and scaling ``alpha / rank`` (``alpha / sqrt(rank)`` with
      ``rslora``); default 8 and ``2 * rank``.
    dropout: dropout on the adapter's input during training (PEFT's ``lora_dropout``).
    target_modules: presets (``attention``, ``mlp``, ``all-linear``; default ``all-linear``)
      or regular expressions matched in full against a module's path
      (``model/layers/0/self_attn/q_proj``) or its name (``q_proj``).
    param_dtype: the adapters' storage dtype (the base keeps ``model.param_dtype``).
    init_from: a PEFT LoRA folder to start from; its rank, alpha, rslora and modules
      apply (setting different ones here is an error).
    export: what ``<run_dir>/export`` holds at the end: ``adapter`` (a PEFT folder),
      ``merged`` (a full Hugging Face folder, adapters merged into the weights) or
      ``both`` (the adapter, and the merged model in ``export/merged``).
    """

    rank: int | None = None
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    rslora: bool | None = None
    param_dtype: str = "float32"
    init_from: str | None = None
    export: str = "adapter"

    def __post_init__(self) -> None:
        if self.rank is not None and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f"lora.rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float))
                                       or self.alpha <= 0):
            raise ValueError(f"lora.alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if self.export not in EXPORTS:
            raise ValueError(f"lora.export must be one of {', '.join(EXPORTS)}, got {self.export!r}")
        if self.param_dtype not in _DTYPES:
            raise ValueError(f"lora.param_dtype must be one of {', '.join(_DTYPES)}, got {self.param_dtype!r}")
        if self.target_modules is not None:
            target_patterns(self.target_modules)

    @property
    def targets(self) -> tuple[str, ...]:
        return DEFAULT_TARGETS if self.target_modules is None else target_patterns(self.target_modules)

    def spec(self) -> "AdapterSpec":
        """The adapters from this section alone (``init_from`` not read; see ``peft_io.resolve_adapters``)."""
        rank = self.rank or DEFAULT_RANK
        alpha = float(self.alpha if self.alpha is not None else DEFAULT_ALPHA_PER_RANK * rank)
        return AdapterSpec(rank, alpha, bool(self.rslora), float(self.dropout), self.targets, self.param_dtype)


def target_patterns(target_modules: Sequence[str] | str) -> tuple[str, ...]:
    """``target_modules`` as a tuple of presets and compiled-checked regexes."""
    patterns = (target_modules,) if isinstance(target_modules, str) else target_modules
    if not isinstance(patterns, (list, tuple)) or not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"lora.target_modules must be a preset ({', '.join(PRESETS)}) or a list of regular "
                         f"expressions over module names, got {target_modules!r}")
    for pattern in patterns:
        if pattern in PRESETS:
            continue
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"lora.target_modules: '{pattern}' is not a regular expression: {err}") from None
    return tuple(patterns)


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """What adapters a model gets: resolved, hashable (the planner caches layouts by it)."""

    rank: int
    alpha: float
    rslora: bool
    dropout: float
    targets: tuple[str, ...]  # presets and regexes (see ``select_modules``)
    param_dtype: str = "float32"

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


# ---------------------------------------------------------------- modules


def _linear_maps(model: nnx.Module) -> dict[tuple, Linear]:
    """The decoder's ``Linear`` modules by path, in model order (layer, then attention before MLP)."""
    found = {tuple(path): node for path, node in nnx.iter_graph(model)
             if isinstance(node, Linear) and path and path[0] == "model"}
    order = PRESETS["all-linear"]

    def position(path: tuple) -> tuple:
        layer = next((key for key in path if isinstance(key, int)), -1)
        return layer, order.index(path[-1]) if path[-1] in order else len(order), path

    return {path: found[path] for path in sorted(found, key=position)}


def adaptable_modules(model: nnx.Module) -> dict[str, Linear]:
    """``{path: Linear}`` of the decoder's linear maps (``model/layers/0/self_attn/q_proj``, ...).
    The output heads (``lm_head``, ``score``) are not adaptable: train them fully with
    ``model.trainable`` instead."""
    return {"/".join(str(key) for key in path): node for path, node in _linear_maps(model).items()}


def describe_modules(paths: Sequence[str]) -> str:
    """The module names and where they are, compactly: ``q_proj, k_proj, ... (paths like
    model/layers/0/self_attn/q_proj, layers 0-31)``."""
    names = list(dict.fromkeys(path.rsplit("/", 1)[-1] for path in paths))
    layers = sorted({int(m.group(1)) for p in paths if (m := re.search(r"/layers/(\d+)/", p))})
    where = f", layers {layers[0]}-{layers[-1]}" if layers else ""
    return f"{', '.join(names)} (paths like {paths[0]}{where})" if paths else "none"


def _matches(pattern: str, path: str) -> bool:
    names = PRESETS.get(pattern)
    name = path.rsplit("/", 1)[-1]
    if names is not None:
        return name in names
    return re.fullmatch(pattern, path) is not None or re.fullmatch(pattern, name) is not None


def select_modules(paths: Sequence[str], targets: Sequence[str]) -> list[str]:
    """The paths some target matches; a target that matches none is a ``ValueError`` listing the modules."""
    for pattern in targets:
        if not any(_matches(pattern, path) for path in paths):
            raise ValueError(f"lora.target_modules: '{pattern}' matches no module; the model's modules are "
                             f"{describe_modules(paths)}; presets: {', '.join(PRESETS)}")
    return [path for path in paths if any(_matches(pattern, path) for pattern in targets)]


def add_adapters(model: nnx.Module, spec: AdapterSpec, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Adds ``spec``'s adapters to ``model`` in place (and returns it; ``model.adapters`` is
    ``spec``). Works under ``nnx.eval_shape``; the loaders draw the real initial values on the host."""
    modules = adaptable_modules(model)
    model.adapters = spec
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    for path in select_modules(list(modules), spec.targets):
        try:
            modules[path].add_adapter(spec.rank, spec.scale, spec.dropout, jnp.dtype(spec.param_dtype), rngs)
        except ValueError as err:
            raise ValueError(f"lora.rank: {err} at {path}; lower lora.rank or leave that module out of "
                             "lora.target_modules") from None
    return model


def adapted_modules(model: nnx.Module) -> dict[str, Linear]:
    """``{path: Linear}`` of the modules that carry an adapter."""
    return {path: module for path, module in adaptable_modules(model).items() if module.lora_a is not None}


def has_adapters(model: nnx.Module) -> bool:
    return bool(adapted_modules(model))


def is_adapter(path: Sequence[Any] | str) -> bool:
    """Whether a parameter path (a tuple of keys or ``a/b/c``) is an adapter's."""
    last = path.rsplit("/", 1)[-1] if isinstance(path, str) else path[-1]
    return last in ADAPTER_KEYS


def with_dropout(model: nnx.Module, key: jax.Array | None) -> nnx.Module:
    """Gives each adapter of a merged model (inside the step) its own dropout key for this
    step; without a key (eval, the reference) adapters run without dropout."""
    if key is None:
        return model
    for index, module in enumerate(adapted_modules(model).values()):
        if module.lora_dropout > 0:
            module.lora_key = LoraKey(jax.random.fold_in(key, index))
    return model


# ---------------------------------------------------------------- params


def trained_patterns(user_trainable: Sequence[str] | None, paths: Sequence[str]) -> list[str]:
    """``model.trainable`` with LoRA: the adapters, a score head (new, so trained fully),
    and the user's own patterns (base parameters to train fully, PEFT's ``modules_to_save``)."""
    patterns = [ADAPTER_PARAM]
    if any(re.fullmatch(SCORE_HEAD, path) for path in paths):
        patterns.append(SCORE_HEAD)
    return patterns + list(user_trainable or [])


def without_adapters(params: dict) -> dict:
    """The parameter tree minus the adapters (the same arrays; empty sub-dicts dropped)."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            inner = without_adapters(value)
            if inner:
                out[key] = inner
        elif key not in ADAPTER_KEYS:
            out[key] = value
    return out


def adapter_leaves(params: dict, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """``(path, leaf)`` of every adapter parameter in a nested dict."""
    for key, value in params.items():
        if isinstance(value, dict):
            yield from adapter_leaves(value, prefix + (key,))
        elif key in ADAPTER_KEYS:
            yield prefix + (key,), value


@jax.jit
def _merge(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array) -> jax.Array:
    rank = a.shape[-1]
    delta = (a.reshape(-1, rank).astype(jnp.float32) @ b.reshape(rank, -1).astype(jnp.float32)) * scale
    return (kernel.astype(jnp.float32) + delta.reshape(kernel.shape)).astype(kernel.dtype)


def merged_kernels(model: nnx.Module):
    """A ``transform(param_path, value) -> value`` for ``save_pretrained`` that folds each
    adapter into its kernel (``W + scale * A @ B``), one tensor at a time."""
    adapted = {path: module for path, module in _linear_maps(model).items() if module.lora_a is not None}

    def transform(path: tuple, value: jax.Array) -> jax.Array:
        module = adapted.get(tuple(path[:-1])) if path[-1] == "kernel" else None
        if module is None:
            return value
        return _merge(value, module.lora_a.get_value(), module.lora_b.get_value(), jnp.float32(module.lora_scale))

    return transform
