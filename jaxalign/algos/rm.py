"""Reward model: a decoder with a scalar head, trained on preference pairs
(Bradley-Terry), on rated replies (pointwise: rating regression, ordinal,
acceptability) or on whole rankings (listwise: Plackett-Luce). The loss's kind
picks the batches (``data_kind``). Scores are read at the last token of each
reply; the vocabulary projection never runs.

A loss with parameters of its own (``ordinal``'s thresholds) trains them in
the state's ``params`` under ``loss_params``; the export is still a
``*ForSequenceClassification`` folder with one score, and their values go into
its ``config.json`` under ``jaxalign`` (docs/feedback.md).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxalign.algos import common
from jaxalign.algos.registry import Algorithm, register_algorithm
from jaxalign.batch import gather_positions
from jaxalign.config import TrainConfig
from jaxalign.sharding import replicated
from jaxalign.losses import ListwiseInputs, LossConfig, PointwiseInputs, RewardInputs, build_loss
from jaxalign.train_state import AlgoRun, Batch, TrainState

LOSS_PARAMS = "loss_params"  # key of the state's params holding the loss's own parameters
REWARD_KINDS = ("reward", "pointwise", "listwise")  # loss kind = data kind for reward models


@dataclasses.dataclass(frozen=True)
class RewardLossConfig(LossConfig):
    """The ``loss:`` section of ``algo: rm``: ``LossConfig`` with the Bradley-Terry loss by default."""

    name: str | Sequence[str] = "bradley_terry"


def data_kind(cfg: TrainConfig) -> str:
    return cfg.loss.kind


def pair_rewards(graphdef: nnx.GraphDef, params, batch: Batch, dropout_key=None) -> jax.Array:
    """Reward of every reply of every example slot, ``[R, K, M]`` float32 (M = 2 for
    pairs: chosen, rejected; the ranking's width for listwise batches)."""
    model = common.merge_model(graphdef, params, dropout_key)
    hidden = model.hidden_states(batch["input_ids"], batch["positions"], batch["segment_ids"], batch["branch_ids"],
                                batch.get("tile_pairs"))
    return model.scores_from_hidden(gather_positions(hidden, batch["end_index"]))


def reward_inputs(scores: jax.Array, batch: Batch, loss_params: dict) -> RewardInputs:
    return RewardInputs(chosen_rewards=scores[..., 0].reshape(-1), rejected_rewards=scores[..., 1].reshape(-1),
                        mask=common.flat_examples(batch), batch=batch)


def pointwise_inputs(scores: jax.Array, batch: Batch, loss_params: dict) -> PointwiseInputs:
    return PointwiseInputs(rewards=scores[..., 0].reshape(-1), mask=common.flat_examples(batch), batch=batch,
                           params=loss_params)


def listwise_inputs(scores: jax.Array, batch: Batch, loss_params: dict) -> ListwiseInputs:
    width = scores.shape[-1]
    return ListwiseInputs(rewards=scores.reshape(-1, width), reply_mask=batch["reply_mask"].reshape(-1, width),
                          mask=common.flat_examples(batch), batch=batch)


INPUTS_FROM_SCORES = {"reward": reward_inputs, "pointwise": pointwise_inputs, "listwise": listwise_inputs}


def initial_loss_params(cfg: TrainConfig) -> dict[str, Any]:
    """The loss's own parameters (``LossSpec.params``), sized by ``data.rating_scale``."""
    from jaxalign.data.ratings import levels

    out: dict[str, Any] = {}
    for spec, _ in cfg.loss.specs():
        if spec.params is not None:
            out.update(spec.params.init(levels(cfg.data.rating_scale)))
    return out


def setup(cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int) -> AlgoRun:
    model = common.build_model(cfg.model, cfg, mesh, head="score", tokenizer=tokenizer, lora=cfg.lora)
    graphdef, params = common.split_params(model)
    params, frozen = common.trainable_split(cfg.model, params, cfg.lora)
    loss_params = initial_loss_params(cfg)
    if loss_params:  # a few numbers: replicated on the mesh like the step counter
        params = {**params, LOSS_PARAMS: jax.tree.map(lambda leaf: jax.device_put(leaf, replicated(mesh)), loss_params)}
    state, optimizer = common.init_train_state(cfg, mesh, params, total_steps)
    loss = build_loss(cfg.loss)
    make_inputs = INPUTS_FROM_SCORES[cfg.loss.kind]

    def loss_fn(params, batch: Batch, frozen: dict, dropout_key=None):
        model_params = {key: value for key, value in params.items() if key != LOSS_PARAMS}
        scores = pair_rewards(graphdef, common.with_frozen(model_params, frozen), batch, dropout_key)
        return loss(make_inputs(scores, batch, params.get(LOSS_PARAMS, {}))).result()

    def train_step(state: TrainState, batch: Batch, frozen: dict):
        key = common.dropout_key(state, cfg.lora)
        return common.gradient_step(state, optimizer, lambda p, b: loss_fn(p, b, frozen, key), batch)

    def eval_step(state: TrainState, batch: Batch, frozen: dict):
        loss_value, metrics = loss_fn(state.params, batch, frozen)
        return {**metrics, "loss": loss_value, "eval_weight": common.num_examples(batch)}

    return AlgoRun(state=state, frozen=frozen, train_step=train_step, eval_step=eval_step,
                   export=_export_with_loss_params(cfg, graphdef, frozen))


def _export_with_loss_params(cfg: TrainConfig, graphdef: nnx.GraphDef, frozen: dict):
    """The HF folder of the model (a PEFT adapter folder under ``lora``); the loss's
    parameters (if any) and the rating scale go into its config.json under ``jaxalign``,
    which transformers keeps as an attribute."""
    export_model = common.export_with(graphdef, frozen, cfg.lora, common.base_name(cfg.model))
    specs = [spec for spec, _ in cfg.loss.specs() if spec.params is not None]

    def export(state: TrainState, path: str):
        loss_params = state.params.get(LOSS_PARAMS)
        written = export_model(state.replace(params={k: v for k, v in state.params.items() if k != LOSS_PARAMS}), path)
        if not specs or jax.process_index() != 0:
            return written
        config_path = Path(path) / "config.json"  # a full folder: check_config refused adapter-only exports
        host = jax.device_get(loss_params)
        extras = {"loss": cfg.loss.names[0], "rating_scale": cfg.data.rating_scale}
        for spec in specs:
            extras.update(spec.params.export(host))
        config = json.loads(config_path.read_text())
        config["jaxalign"] = extras
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        return written

    return export


@register_algorithm
class RewardModel(Algorithm):
    """``algo: rm``: a scalar-head model trained on preference pairs (``loss:`` section, reward losses)."""

    name = "rm"
    supports_lora = True  # builds its trained model through the trainable-subset seam
    sections = {"loss": RewardLossConfig}
    head = "score"

    def check_config(self, cfg: TrainConfig) -> None:
        if cfg.loss.kind not in REWARD_KINDS:
            raise ValueError(f"algo rm trains with a reward-model loss (bradley_terry; rating_regression, ordinal, "
                             f"acceptability; plackett_luce), got loss.name '{cfg.loss.name}'")
        learns_params = any(spec.params is not None for spec, _ in cfg.loss.specs())
        if learns_params and cfg.data.rating_scale is None:
            raise ValueError(f"loss '{cfg.loss.name}' learns one threshold between each two rating levels; declare "
                             "the scale as data.rating_scale: [lowest, highest] (e.g. [1, 5])")
        if learns_params and cfg.export and cfg.lora is not None and cfg.lora.export != "merged":
            raise ValueError(f"lora.export: {cfg.lora.export} writes a PEFT adapter folder, which has no config.json "
                             f"to hold loss '{cfg.loss.name}''s learned thresholds; set lora.export: merged "
                             "(the adapters merged into a full folder) or export: false")
        common.check_soft_labels(cfg)

    def data_kind(self, cfg: TrainConfig) -> str:
        return data_kind(cfg)

    def setup(self, cfg: TrainConfig, mesh: Mesh, tokenizer, total_steps: int, sink=None) -> AlgoRun:
        return setup(cfg, mesh, tokenizer, total_steps)
