"""Pieces every algorithm's setup and step share: model building, the
optimizer update, and the packed-batch views the losses consume."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxalign.config import ModelSpec, TrainConfig
from jaxalign.models import ModelConfig, init_model, load_pretrained
from jaxalign.optim import build_optimizer
from jaxalign.sharding import replicated, rules_from
from jaxalign.train_state import Batch, Metrics, TrainState


def build_model(spec: ModelSpec, cfg: TrainConfig, mesh: Mesh, head: str, tokenizer=None):
    """Loads ``spec.path`` (an HF folder) or random-initialises ``spec.config``
    (whose ``vocab_size`` defaults to the tokenizer's)."""
    rules = rules_from(cfg.mesh)
    options = dict(dtype=spec.dtype, param_dtype=spec.param_dtype, remat=spec.remat)
    if spec.path is not None:
        return load_pretrained(spec.path, mesh=mesh, rules=rules, head=head, seed=spec.seed, **options)
    hf_config = dict(spec.config)
    if "vocab_size" not in hf_config and tokenizer is not None:
        hf_config["vocab_size"] = len(tokenizer)
    model_config = ModelConfig.from_hf(hf_config, **options)
    return init_model(model_config, head=head, seed=spec.seed, mesh=mesh, rules=rules)


def split_params(model) -> tuple[nnx.GraphDef, dict]:
    """Graph definition (static) and parameters as a plain nested dict of arrays."""
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


def init_train_state(cfg: TrainConfig, mesh: Mesh, params: dict, total_steps: int, extra: dict | None = None):
    """A fresh train state on the mesh; scalars (step, rng) replicated so that
    every leaf is a global array (multi-process checkpoints need that)."""
    optimizer = build_optimizer(cfg.optim, total_steps)
    state = TrainState.create(params, jax.jit(optimizer.init)(params), cfg.seed, extra)
    return jax.tree.map(lambda leaf: on_mesh(leaf, mesh), state), optimizer


def on_mesh(leaf: jax.Array, mesh: Mesh) -> jax.Array:
    """Leaves that did not inherit a sharding on ``mesh`` (counters, rng) are replicated over it."""
    if isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh == mesh:
        return leaf
    if leaf.ndim > 0 and leaf.sharding.device_set == set(mesh.devices.flat):
        return leaf
    return jax.device_put(leaf, replicated(mesh))


def gradient_step(
    state: TrainState,
    optimizer: optax.GradientTransformation,
    loss_fn: Callable[[Any, Batch], tuple[jax.Array, Metrics]],
    batch: Batch,
) -> tuple[TrainState, Metrics]:
    """One optimizer (or accumulation) step on ``loss_fn(params, batch) -> (loss, metrics)``."""
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def flat_examples(batch: Batch) -> jax.Array:
    """Example mask flattened to ``[N]`` (N = rows x slots)."""
    return batch["example_mask"].reshape(-1)


def num_examples(batch: Batch) -> jax.Array:
    return jnp.sum(batch["example_mask"])


def export_with(graphdef: nnx.GraphDef) -> Callable[[TrainState, str], None]:
    from jaxalign.models import save_pretrained

    def export(state: TrainState, path: str) -> None:
        save_pretrained(nnx.merge(graphdef, state.params), path)

    return export
