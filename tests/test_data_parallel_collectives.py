"""On a data-parallel mesh every device keeps its own rows: the compiled train steps move
gradients and scalars between devices, never activations (8 fake CPU devices)."""

from __future__ import annotations

import jax
import pytest

from jaxalign import configlib
from jaxalign.config import TrainConfig
from jaxalign.sharding import shard_batch
from jaxalign.trainer import Trainer
from tests.hlo_fixtures import collectives
from tests.train_fixtures import tiny_run_config

# An all-gather of a row's worth of scalars (e.g. per-row scores) is fine; an activation
# ([rows, tokens, hidden]) is thousands of elements even in the tiny model.
MOST_ELEMENTS_MOVED = 1024


@pytest.mark.parametrize("algo", ["dpo", "sft", "rm"])
def test_train_step_moves_no_activations_between_data_parallel_devices(tmp_path, algo):
    assert jax.device_count() == 8
    trainer = Trainer(configlib.from_dict(TrainConfig, tiny_run_config(tmp_path / "run", algo=algo)))
    assert trainer.mesh.shape["data"] == 8
    batch = shard_batch(next(trainer.train_data.iterator()), trainer.mesh)
    step = jax.jit(lambda state, batch, frozen: trainer.algo.train_step(state, batch, frozen))
    hlo = step.lower(trainer.state, batch, trainer.algo.frozen).compile().as_text()
    found = collectives(hlo)
    assert any(c.kind == "all-reduce" for c in found)  # the gradients are summed over the devices
    moved = [c for c in found if c.kind in ("all-gather", "all-to-all", "collective-permute")
             and c.elements > MOST_ELEMENTS_MOVED]
    assert not moved, f"{algo} step moves activations between devices: {moved}"
