"""The train state pytree shared by every algorithm, and the algorithm contract."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a train step updates. Model graph definitions stay outside,
    closed over by the step functions, so this is a plain pytree of arrays.

    ``step`` counts micro-batches (train-step calls); with gradient
    accumulation the optimizer updates every ``grad_accum_steps`` of them.
    ``extra`` holds algorithm-specific state (PPO's value model, KL controller).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    extra: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, params: Any, opt_state: Any, seed: int, extra: dict | None = None) -> "TrainState":
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=opt_state,
            rng=jax.random.key_data(jax.random.key(seed)),
            extra=extra or {},
        )


@dataclasses.dataclass
class AlgoRun:
    """What ``Algorithm.setup(cfg, mesh, tokenizer, total_steps, sink)`` hands the
    trainer (``jaxalign.algos.registry``; its ``data_kind(cfg)`` says which batches it eats).

    ``train_step(state, batch, frozen) -> (state, metrics)`` and
    ``eval_step(state, batch, frozen) -> metrics`` are pure; the trainer jits
    them with explicit shardings and donates the state. ``frozen`` (reference
    or reward parameters, the trained model's frozen part) is never donated.
    ``state.params`` holds only the trained parameters (``common.trainable_split``).
    Metrics are scalars; eval metrics include ``eval_weight`` (examples, or
    tokens for SFT) by which the trainer weights its averages over the split.
    """

    state: TrainState
    frozen: Any
    train_step: Callable[[TrainState, Batch, Any], tuple[TrainState, Metrics]]
    eval_step: Callable[[TrainState, Batch, Any], Metrics]
    # Writes the trained model under the path: a Hugging Face folder, or (LoRA) a PEFT adapter
    # folder and/or the merged model; returns the folders written (None: just the path), each
    # of which gets the tokenizer.
    export: Callable[[TrainState, str], list[str] | None]
    # Derived eval metrics from the split's averages (e.g. perplexity = exp(loss)).
    summarize_eval: Callable[[dict[str, float]], dict[str, float]] | None = None
    # RL: ``rollout(state, batch, frozen, split, index) -> (batch, host_metrics)`` runs on
    # the host before every train (and eval) step: sampling, reward functions on decoded
    # strings and other side effects live here, outside the pure jitted step. ``split`` is
    # "train" or "eval", ``index`` the eval batch's number. ``host_metrics`` are floats
    # (``time/NAME_s`` seconds, ``tokens/NAME`` counts) logged with the step's metrics.
    # Tables (the sampled ``completions``) and events go to the ``sink`` setup received,
    # stamped with the step being trained: ``int(state.step) + 1`` for a train rollout.
    rollout: Callable[[TrainState, Batch, Any, str, int], tuple[Batch, dict[str, float]]] | None = None
    # Optimizer updates per train step (PPO: epochs x minibatches); the learning-rate
    # schedule and its logged value count updates.
    updates_per_step: int = 1
