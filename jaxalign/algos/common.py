"""Pieces every algorithm's setup and step share: model building, the
optimizer update, and the packed-batch views the losses consume."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jaxalign.batch import gather_targets, per_example_sums
from jaxalign.config import ModelSpec, TrainConfig
from jaxalign.losses.registry import soft_label_losses
from jaxalign.models import ModelConfig, init_model, load_pretrained, token_logps
from jaxalign.models import lora as lora_lib
from jaxalign.models.lora import LoraConfig
from jaxalign.models.trainable import combine, leaf_paths, partition
from jaxalign.optim import build_optimizer
from jaxalign.sharding import replicated, rules_from
from jaxalign.train_state import Batch, Metrics, TrainState


def build_model(spec: ModelSpec, cfg: TrainConfig, mesh: Mesh, head: str, tokenizer=None,
                lora: LoraConfig | None = None):
    """Loads ``spec.path`` (an HF folder) or random-initialises ``spec.config``
    (whose ``vocab_size`` defaults to the tokenizer's). With ``lora`` (pass ``cfg.lora``
    for the model an algorithm trains) the model carries LoRA adapters (docs/lora.md)."""
    rules = rules_from(cfg.mesh)
    options = dict(dtype=spec.dtype, param_dtype=spec.param_dtype, remat=spec.remat, attention=spec.attention)
    if spec.path is not None:
        return load_pretrained(spec.path, mesh=mesh, rules=rules, head=head, seed=spec.seed, lora=lora, **options)
    hf_config = dict(spec.config)
    if "vocab_size" not in hf_config and tokenizer is not None:
        hf_config["vocab_size"] = len(tokenizer)
    model_config = ModelConfig.from_hf(hf_config, **options)
    return init_model(model_config, head=head, seed=spec.seed, mesh=mesh, rules=rules, lora=lora)


def split_params(model) -> tuple[nnx.GraphDef, dict]:
    """Graph definition (static) and parameters as a plain nested dict of arrays."""
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


FROZEN_PARAMS = "frozen_params"  # the key of AlgoRun.frozen that holds the trained model's frozen part


def trainable_split(spec: ModelSpec, params: dict, lora: LoraConfig | None = None) -> tuple[dict, dict]:
    """``(trained params, frozen)`` per ``spec.trainable``/``spec.freeze``: the train state
    gets the first; the second (``{}`` when everything trains, else
    ``{FROZEN_PARAMS: the rest}``) goes into ``AlgoRun.frozen``, an input of every
    step that is never donated or checkpointed. ``with_frozen`` puts them back together.
    With ``lora`` the adapters (and a score head) train, plus what ``spec.trainable`` adds,
    and the base is the frozen part (``lora.trained_patterns``)."""
    trainable = spec.trainable
    if lora is not None:
        trainable = lora_lib.trained_patterns(spec.trainable, [path for path, _ in leaf_paths(params)])
    trained, frozen = partition(params, trainable, spec.freeze)
    return trained, ({FROZEN_PARAMS: frozen} if frozen else {})


def with_frozen(params: dict, frozen: dict) -> dict:
    """The whole parameter tree from the trained part and the step's ``frozen`` input."""
    return combine(params, frozen.get(FROZEN_PARAMS, {}))


REF_TRAINED = "ref_trained"  # AlgoRun.frozen: the trained parameters' starting values, for a reference


def starting_reference(model, graphdef: nnx.GraphDef, trained: dict, copy: bool = True,
                       dtype: str | None = None) -> tuple[nnx.GraphDef, dict]:
    """The model as it starts, as a frozen reference policy, without a second copy of what
    is frozen anyway: ``(graph definition, entries for AlgoRun.frozen)``. The reference's
    parameters are the model's frozen part (``FROZEN_PARAMS``, shared) plus the starting
    values of its trained parameters, copied under ``REF_TRAINED`` (the policy's buffers are
    donated every step). With LoRA adapters it is the base with adapters off: the base's
    graph definition, and copies of trained base parameters only (``model.trainable``;
    usually none). ``reference_params(frozen)`` assembles them inside the step. ``copy=False``
    shares the trained arrays too, for a use before the first step (precomputing log-probs).
    ``dtype``: the copies' storage dtype (PPO's ``frozen_dtype``; the shared part keeps its own)."""
    if lora_lib.has_adapters(model):
        from jaxalign.models.init import abstract_model
        from jaxalign.models.peft_io import head_of

        graphdef = abstract_model(model.config, head_of(model))[0]
        trained = lora_lib.without_adapters(trained)
    if copy:
        trained = jax.tree.map(lambda leaf: stored_copy(leaf, dtype), trained)
    return graphdef, ({REF_TRAINED: trained} if trained else {})


def stored_copy(leaf: jax.Array, dtype: str | None = None) -> jax.Array:
    """A separate copy of ``leaf`` (floating leaves in ``dtype`` when given)."""
    if dtype is not None and jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != jnp.dtype(dtype):
        return leaf.astype(dtype)
    # astype to the same dtype returns the same buffer, which the first donated step would delete.
    return jnp.copy(leaf)


def base_name(spec: ModelSpec) -> str | None:
    """The base an exported LoRA adapter names (``base_model_name_or_path``)."""
    from jaxalign.models.peft_io import base_name as folder_name

    return folder_name(spec.path)


def reference_params(frozen: dict) -> dict:
    """``starting_reference``'s parameters from the step's ``frozen`` input."""
    return combine(frozen.get(REF_TRAINED, {}), frozen.get(FROZEN_PARAMS, {}))


def dropout_key(state: TrainState, lora: LoraConfig | None) -> jax.Array | None:
    """This train step's LoRA dropout key (None without dropout): from the state's rng and
    step, so a resumed run draws the masks a straight one does."""
    if lora is None or not lora.dropout:
        return None
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def merge_model(graphdef: nnx.GraphDef, params: dict, key: jax.Array | None = None):
    """``nnx.merge`` inside a step; with a dropout ``key`` the LoRA adapters drop out."""
    return lora_lib.with_dropout(nnx.merge(graphdef, params), key)


def init_train_state(cfg: TrainConfig, mesh: Mesh, params: dict, total_steps: int, extra: dict | None = None):
    """A fresh train state on the mesh; scalars (step, rng) replicated so that
    every leaf is a global array (multi-process checkpoints need that)."""
    optimizer = build_optimizer(cfg.optim, total_steps)
    state = TrainState.create(params, sharded_optimizer_init(optimizer, params, mesh), cfg.seed, extra)
    return jax.tree.map(lambda leaf: on_mesh(leaf, mesh), state), optimizer


def sharded_optimizer_init(optimizer: optax.GradientTransformation, params: dict, mesh: Mesh):
    """The optimizer state with every per-parameter leaf (Adam's moments, the
    accumulated gradients) sharded like its parameter, counters replicated.
    A plain ``jax.jit(optimizer.init)`` replicates the zeros it creates, which
    costs every device the whole optimizer state and defeats fsdp."""
    param_shardings = jax.tree.map(lambda leaf: leaf.sharding, params)
    abstract = jax.eval_shape(optimizer.init, params)
    shardings = optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract, param_shardings,
                                      transform_non_params=lambda _: replicated(mesh))
    return jax.jit(optimizer.init, out_shardings=shardings)(params)


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


def check_soft_labels(cfg: TrainConfig) -> None:
    """``data.strength_column`` needs a loss that reads per-pair preference strengths."""
    if cfg.data.strength_column and not any(spec.soft_labels for spec, _ in cfg.loss.specs()):
        raise ValueError(f"data.strength_column '{cfg.data.strength_column}' gives each pair a preference strength, "
                         f"which loss '{cfg.loss.name}' ignores; use one that reads them "
                         f"({', '.join(soft_label_losses())}), or unset data.strength_column")


def flat_examples(batch: Batch) -> jax.Array:
    """Example mask flattened to ``[N]`` (N = rows x slots)."""
    return batch["example_mask"].reshape(-1)


def num_examples(batch: Batch) -> jax.Array:
    return jnp.sum(batch["example_mask"])


def export_with(graphdef: nnx.GraphDef, frozen: dict | None = None, lora: LoraConfig | None = None,
                base_name: str | None = None) -> Callable[[TrainState, str], list[str] | None]:
    """``export(state, path)``: ``export_params`` of the state's trained part."""
    return lambda state, path: export_params(graphdef, state.params, frozen, lora, base_name, path)


def export_params(graphdef: nnx.GraphDef, params: dict, frozen: dict | None, lora: LoraConfig | None,
                  base_name: str | None, path: str) -> list[str] | None:
    """Writes the whole model (trained part ``params`` + frozen part) as a Hugging Face folder;
    with ``lora``, what ``lora.export`` says (a PEFT adapter folder naming ``base_name`` as its
    base, the merged model, or both) and returns the folders written."""
    from jaxalign.models import save_pretrained
    from jaxalign.models.peft_io import export_lora

    model = nnx.merge(graphdef, with_frozen(params, frozen or {}))
    if lora is None:
        save_pretrained(model, path)
        return None
    trained = {name for name, _ in leaf_paths(params)}
    return export_lora(model, path, lora.export, trained, base_name)


def completion_logps(model, batch: Batch, with_logits_mean: bool = False, with_hits: bool = False) -> dict[str, jax.Array]:
    """Log-probs of the batch's completion tokens under a ``CausalLM``.

    Runs the decoder over the packed rows, then the vocabulary projection only
    on the target positions (chunked, so ``[groups, targets, vocab]`` float32 is
    never held). Returns ``token_logps`` ``[G, C]`` (0 in unused slots),
    ``sums`` ``[R, K, 2]`` (summed per example and branch) and, if asked,
    ``logits_mean_sums`` ``[R, K, 2]``: per-token mean logits (over the
    vocabulary) summed per example, for TRL's ``logits/*`` metrics (the mean
    logit is linear in the hidden state, so it costs one ``[hidden]`` dot), and
    ``hits`` ``[G, C]`` float32: 1 where the target is the top-1 token.
    """
    hidden = model.hidden_states(batch["input_ids"], batch["positions"], batch["segment_ids"], batch["branch_ids"],
                                batch.get("tile_pairs"))
    target_hidden = gather_targets(hidden, batch)
    used = batch["target_segment"] > 0
    logps, hits = token_logps(model, target_hidden, batch["target_ids"], return_hits=True)
    logps = jnp.where(used, logps, 0.0)
    out = {"token_logps": logps, "sums": per_example_sums(logps, batch)}
    if with_hits:
        out["hits"] = jnp.where(used, hits, False).astype(jnp.float32)
    if with_logits_mean:
        weights, vocab_axis = model.output_projection()
        mean_direction = jnp.mean(weights.astype(jnp.float32), axis=vocab_axis)  # [hidden]
        mean_logits = jnp.where(used, jnp.einsum("gch,h->gc", target_hidden.astype(jnp.float32), mean_direction), 0.0)
        out["logits_mean_sums"] = per_example_sums(mean_logits, batch)
    return out
