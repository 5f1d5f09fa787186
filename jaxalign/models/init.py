"""Random initialisation of models, drawn on the host parameter by parameter and placed on shardings.

Drawing with numpy avoids compiling one random-number program per parameter
(XLA's CPU compile of hundreds of threefry draws takes minutes); each
parameter's stream is seeded by (seed, its path), so every process draws the
same values and a parameter's init does not depend on the others.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxalign.models.config import ModelConfig
from jaxalign.models.heads import ScoreModel
from jaxalign.models.lora import AdapterSpec, LoraConfig, add_adapters, is_adapter
from jaxalign.models.partition import place
from jaxalign.models.transformer import CausalLM

HEADS = ("causal_lm", "score")
Model = CausalLM | ScoreModel


def model_class(head: str) -> type[CausalLM] | type[ScoreModel]:
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS} (or 'auto' when loading), got {head!r}")
    return ScoreModel if head == "score" else CausalLM


def abstract_model(model_config: ModelConfig, head: str,
                   adapters: AdapterSpec | None = None) -> tuple[nnx.GraphDef, dict[tuple, nnx.Variable]]:
    """Graph definition and flat ``{path: abstract variable}`` (shapes, dtypes, axes; no memory),
    with ``adapters`` (LoRA, ``jaxalign.models.lora``) if given."""
    cls = model_class(head)

    def build():
        model = cls(model_config, rngs=nnx.Rngs(0))
        return model if adapters is None else add_adapters(model, adapters)

    graphdef, state = nnx.split(nnx.eval_shape(build))
    return graphdef, dict(nnx.to_flat_state(state))


def host_init(variable: nnx.Variable, path: tuple, seed: int) -> np.ndarray:
    """Initial value of one parameter as a float32 host array, per its ``init`` metadata."""
    meta = variable.get_metadata()
    shape = tuple(variable.get_value().shape)
    kind = meta.get("init", "normal")
    if kind == "zeros":
        return np.zeros(shape, np.float32)
    if kind == "ones":
        return np.ones(shape, np.float32)
    stream = zlib.crc32("/".join(map(str, path)).encode())
    rng = np.random.default_rng([seed, stream])
    if kind == "uniform":
        bound = np.float32(meta.get("init_std", 0.02))
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    values = rng.standard_normal(shape, dtype=np.float32)
    values *= np.float32(meta.get("init_std", 0.02))
    return values


def resolve_lora(lora: LoraConfig | None, model_config: ModelConfig, head: str,
                 model_path: str | None) -> AdapterSpec | None:
    """The adapters of a model built with the ``lora:`` section (``jaxalign.models.peft_io.resolve_adapters``)."""
    if lora is None:
        return None
    from jaxalign.models.peft_io import resolve_adapters

    return resolve_adapters(lora, model_config, head, model_path)


def initial_adapter_values(lora: LoraConfig, variables: dict[tuple, nnx.Variable], model_config: ModelConfig,
                           head: str, seed: int) -> dict[tuple, np.ndarray]:
    """Host values to start from: ``lora.init_from``'s tensors (adapters and fully saved
    modules), fresh adapters (``host_init``) for the rest."""
    start: dict[tuple, np.ndarray] = {}
    if lora.init_from is not None:
        from jaxalign.models.peft_io import adapter_values

        start = adapter_values(lora.init_from, variables, model_config, head)
    for path, variable in variables.items():
        if is_adapter(path) and path not in start:
            start[path] = host_init(variable, path, seed)
    return start


def assemble(graphdef: nnx.GraphDef, variables: dict[tuple, nnx.Variable], values: Mapping[tuple, Any]) -> Model:
    """Merges placed arrays ``values`` into the abstract model's structure."""
    unfilled = set(variables) - set(values)
    if unfilled:
        raise ValueError(f"internal: parameters {sorted(map(str, unfilled))} have no value")
    state = nnx.from_flat_state([(path, v.replace(values[path])) for path, v in variables.items()])
    return nnx.merge(graphdef, state)


def init_model(
    model_config: ModelConfig,
    *,
    head: str = "causal_lm",
    seed: int = 0,
    mesh: Mesh | None = None,
    rules: Mapping[str, Any] | None = None,
    lora: LoraConfig | None = None,
) -> Model:
    """A random ``CausalLM`` or ``ScoreModel``: normal(initializer_range) weights
    (GPT-2's residual projections scaled by 1/sqrt(2 * layers)), unit norms,
    zero biases; each parameter placed on its sharding (``mesh`` None: first device).
    With ``lora`` (the ``lora:`` section), LoRA adapters too (``jaxalign.models.lora``).
    """
    graphdef, variables = abstract_model(model_config, head, resolve_lora(lora, model_config, head, None))
    start = {} if lora is None else initial_adapter_values(lora, variables, model_config, head, seed)
    values = {path: place(start[path] if path in start else host_init(v, path, seed), v, mesh, rules)
              for path, v in variables.items()}
    return assemble(graphdef, variables, values)
