"""Supervised fine-tuning: next-token NLL on completion tokens (or every token),
over packed rows so no compute goes to padding."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxalign.algos import common
from jaxalign.config import TrainConfig
from jaxalign.train_state import AlgoRun, Batch, TrainState


def data_kind(cfg: TrainConfig) -> str:
    return "sft"


def nll_and_metrics(graphdef: nnx.GraphDef, params, batch: Batch):
    """Mean NLL over the batch's target tokens, and TRL's SFT metrics."""
    out = common.completion_logps(nnx.merge(graphdef, params), batch, with_hits=True)
    used = (batch["target_segment"] > 0).astype(jnp.float32)
    num_tokens = jnp.sum(used)
    denominator = jnp.maximum(num_tokens, 1.0)
    loss = -jnp.sum(out["token_logps"]) / denominator
    accuracy = jnp.sum(out["hits"] * used) / denominator
    return loss, {"mean_token_accuracy": accuracy, "num_tokens": num_tokens}


def setup(cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int) -> AlgoRun:
    model = common.build_model(cfg.model, cfg, mesh, head="causal_lm", tokenizer=tokenizer)
    graphdef, params = common.split_params(model)
    state, optimizer = common.init_train_state(cfg, mesh, params, total_steps)

    def loss_fn(params, batch: Batch):
        return nll_and_metrics(graphdef, params, batch)

    def train_step(state: TrainState, batch: Batch, frozen):
        return common.gradient_step(state, optimizer, loss_fn, batch)

    def eval_step(state: TrainState, batch: Batch, frozen):
        loss, metrics = loss_fn(state.params, batch)
        # Weighted by tokens, so the trainer's average is the split's token-level NLL.
        return {"loss": loss, "mean_token_accuracy": metrics["mean_token_accuracy"],
                "eval_weight": metrics["num_tokens"]}

    def summarize_eval(metrics: dict[str, float]) -> dict[str, float]:
        return {**metrics, "perplexity": math.exp(min(metrics["loss"], 80.0))}

    return AlgoRun(state=state, frozen={}, train_step=train_step, eval_step=eval_step,
                   export=common.export_with(graphdef), summarize_eval=summarize_eval)
