"""Reward model: a decoder with a scalar head, trained with the Bradley-Terry loss
on preference pairs. Scores are read at the last token of each reply; the
vocabulary projection never runs."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxalign.algos import common
from jaxalign.algos.registry import Algorithm, register_algorithm
from jaxalign.batch import gather_positions
from jaxalign.config import TrainConfig
from jaxalign.losses import LossConfig, RewardInputs, build_loss
from jaxalign.train_state import AlgoRun, Batch, TrainState


@dataclasses.dataclass(frozen=True)
class RewardLossConfig(LossConfig):
    """The ``loss:`` section of ``algo: rm``: ``LossConfig`` with the Bradley-Terry loss by default."""

    name: str | Sequence[str] = "bradley_terry"


def data_kind(cfg: TrainConfig) -> str:
    return "reward"


def pair_rewards(graphdef: nnx.GraphDef, params, batch: Batch, dropout_key=None) -> jax.Array:
    """Reward of chosen and rejected for every example slot, ``[R, K, 2]`` float32."""
    model = common.merge_model(graphdef, params, dropout_key)
    hidden = model.hidden_states(batch["input_ids"], batch["positions"], batch["segment_ids"], batch["branch_ids"],
                                batch.get("tile_pairs"))
    return model.scores_from_hidden(gather_positions(hidden, batch["end_index"]))


def setup(cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int) -> AlgoRun:
    model = common.build_model(cfg.model, cfg, mesh, head="score", tokenizer=tokenizer, lora=cfg.lora)
    graphdef, params = common.split_params(model)
    params, frozen = common.trainable_split(cfg.model, params, cfg.lora)
    state, optimizer = common.init_train_state(cfg, mesh, params, total_steps)
    loss = build_loss(cfg.loss)

    def loss_fn(params, batch: Batch, frozen: dict, dropout_key=None):
        rewards = pair_rewards(graphdef, common.with_frozen(params, frozen), batch, dropout_key)
        inputs = RewardInputs(
            chosen_rewards=rewards[..., 0].reshape(-1),
            rejected_rewards=rewards[..., 1].reshape(-1),
            mask=common.flat_examples(batch),
            batch=batch,
        )
        return loss(inputs).result()

    def train_step(state: TrainState, batch: Batch, frozen: dict):
        key = common.dropout_key(state, cfg.lora)
        return common.gradient_step(state, optimizer, lambda p, b: loss_fn(p, b, frozen, key), batch)

    def eval_step(state: TrainState, batch: Batch, frozen: dict):
        loss_value, metrics = loss_fn(state.params, batch, frozen)
        return {**metrics, "loss": loss_value, "eval_weight": common.num_examples(batch)}

    return AlgoRun(state=state, frozen=frozen, train_step=train_step, eval_step=eval_step,
                   export=common.export_with(graphdef, frozen, cfg.lora, common.base_name(cfg.model)))


@register_algorithm
class RewardModel(Algorithm):
    """``algo: rm``: a scalar-head model trained on preference pairs (``loss:`` section, reward losses)."""

    name = "rm"
    sections = {"loss": RewardLossConfig}
    head = "score"

    def check_config(self, cfg: TrainConfig) -> None:
        if cfg.loss.kind != "reward":
            raise ValueError(f"algo rm trains with a reward loss (loss.name: bradley_terry), got loss.name '{cfg.loss.name}'")

    def data_kind(self, cfg: TrainConfig) -> str:
        return data_kind(cfg)

    def setup(self, cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int, sink=None) -> AlgoRun:
        return setup(cfg, mesh, tokenizer, total_steps)
