"""Supervised fine-tuning: next-token NLL on completion tokens (or every token),
over packed rows so no compute goes to padding."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxalign.algos import common
from jaxalign.algos.registry import Algorithm, register_algorithm
from jaxalign.config import TrainConfig
from jaxalign.train_state import AlgoRun, Batch, TrainState


def data_kind(cfg: TrainConfig) -> str:
    return "sft"


def nll_and_metrics(graphdef: nnx.GraphDef, params, batch: Batch, dropout_key=None):
    """Mean NLL over the batch's target tokens, and TRL's SFT metrics."""
    out = common.completion_logps(common.merge_model(graphdef, params, dropout_key), batch, with_hits=True)
    used = (batch["target_segment"] > 0).astype(jnp.float32)
    num_tokens = jnp.sum(used)
    denominator = jnp.maximum(num_tokens, 1.0)
    loss = -jnp.sum(out["token_logps"]) / denominator
    accuracy = jnp.sum(out["hits"] * used) / denominator
    return loss, {"mean_token_accuracy": accuracy, "num_tokens": num_tokens}


def setup(cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int) -> AlgoRun:
    model = common.build_model(cfg.model, cfg, mesh, head="causal_lm", tokenizer=tokenizer, lora=cfg.lora)
    graphdef, params = common.split_params(model)
    params, frozen = common.trainable_split(cfg.model, params, cfg.lora)
    state, optimizer = common.init_train_state(cfg, mesh, params, total_steps)

    def loss_fn(params, batch: Batch, frozen: dict, dropout_key=None):
        return nll_and_metrics(graphdef, common.with_frozen(params, frozen), batch, dropout_key)

    def train_step(state: TrainState, batch: Batch, frozen: dict):
        key = common.dropout_key(state, cfg.lora)
        return common.gradient_step(state, optimizer, lambda p, b: loss_fn(p, b, frozen, key), batch)

    def eval_step(state: TrainState, batch: Batch, frozen: dict):
        loss, metrics = loss_fn(state.params, batch, frozen)
        # Weighted by tokens, so the trainer's average is the split's token-level NLL.
        return {"loss": loss, "mean_token_accuracy": metrics["mean_token_accuracy"],
                "eval_weight": metrics["num_tokens"]}

    def summarize_eval(metrics: dict[str, float]) -> dict[str, float]:
        return {**metrics, "perplexity": math.exp(min(metrics["loss"], 80.0))}

    return AlgoRun(state=state, frozen=frozen, train_step=train_step, eval_step=eval_step,
                   export=common.export_with(graphdef, frozen, cfg.lora, common.base_name(cfg.model)),
                   summarize_eval=summarize_eval)


@register_algorithm
class SFT(Algorithm):
    """``algo: sft``: next-token NLL on completions; no section of its own."""

    name = "sft"
    supports_lora = True  # builds its trained model through the trainable-subset seam

    def data_kind(self, cfg: TrainConfig) -> str:
        return data_kind(cfg)

    def setup(self, cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int, sink=None) -> AlgoRun:
        return setup(cfg, mesh, tokenizer, total_steps)
