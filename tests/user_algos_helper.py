"""A user's own algorithm, named in YAML as ``algo: tests.user_algos_helper:ScaledNLL``
(or by file path) by tests/test_algorithms.py. Not a test module.

It is written the way a user would: only public pieces of jaxalign (the
``Algorithm`` base class, ``AlgoRun``, the shared helpers in ``jaxalign.algos.common``).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

import jaxalign
from jaxalign.algos import common
from jaxalign.train_state import AlgoRun


@dataclasses.dataclass
class ScaledNLLConfig:
    """The ``scaled_nll:`` section: the NLL is multiplied by ``scale``."""

    scale: float = 1.0
    publish_every: int = 0  # > 0: a rollout hook publishes a "batches" table every that many steps

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError(f"scaled_nll.scale must be > 0, got {self.scale}")


class ScaledNLL(jaxalign.Algorithm):
    """Next-token NLL on completion tokens, times ``scaled_nll.scale``."""

    name = "scaled_nll"
    sections = {"scaled_nll": ScaledNLLConfig}

    def check_config(self, cfg) -> None:
        if cfg.optim.grad_accum_steps != 1:
            raise ValueError("scaled_nll: optim.grad_accum_steps must be 1")

    def data_kind(self, cfg) -> str:
        return "sft"

    def setup(self, cfg, mesh, tokenizer, total_steps, sink=None) -> AlgoRun:
        model = common.build_model(cfg.model, cfg, mesh, head="causal_lm", tokenizer=tokenizer)
        graphdef, params = common.split_params(model)
        state, optimizer = common.init_train_state(cfg, mesh, params, total_steps)
        scale = cfg.scaled_nll.scale

        def loss_fn(params, batch):
            out = common.completion_logps(nnx.merge(graphdef, params), batch)
            tokens = jnp.sum((batch["target_segment"] > 0).astype(jnp.float32))
            nll = -jnp.sum(out["token_logps"]) / jnp.maximum(tokens, 1.0)
            return scale * nll, {"nll": nll, "num_tokens": tokens}

        def train_step(state, batch, frozen):
            return common.gradient_step(state, optimizer, loss_fn, batch)

        def eval_step(state, batch, frozen):
            loss, metrics = loss_fn(state.params, batch)
            return {"loss": loss, "nll": metrics["nll"], "eval_weight": metrics["num_tokens"]}

        def rollout(state, batch, frozen, split, index):
            """Host-side, before each step: publish what this step will train on (the way an RL
            rollout publishes its completions). ``state.step`` counts finished steps."""
            step = int(state.step) + 1 if split == "train" else int(state.step)
            every = cfg.scaled_nll.publish_every
            if split == "train" and step % every == 0:
                lengths = (batch["segment_ids"] > 0).sum(axis=1)
                sink.write_table(step, "batches", [{"step": step, "row": r, "tokens": int(n)}
                                                   for r, n in enumerate(lengths.tolist())])
                sink.write_event(step, "published", rows=len(lengths))
            return batch, {}

        return AlgoRun(state=state, frozen={}, train_step=train_step, eval_step=eval_step,
                       export=common.export_with(graphdef),
                       rollout=rollout if cfg.scaled_nll.publish_every and sink is not None else None)


NOT_AN_ALGORITHM = 3
