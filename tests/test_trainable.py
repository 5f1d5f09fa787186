"""The trainable subset (``model.trainable`` / ``model.freeze``): the train state, optimizer and
checkpoints hold only trained parameters; frozen ones are step inputs, unchanged by training;
resume is exact; the export is the whole model and loads in transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxalign.algos import rm
from jaxalign.config import load_config
from jaxalign.configlib import ConfigError
from jaxalign.data import load_tokenizer
from jaxalign.models.trainable import combine, partition
from jaxalign.sharding import make_mesh
from jaxalign.trainer import Trainer
from tests.train_fixtures import read_metrics, tiny_run_config, write_config

EMBEDDING = "model/embed_tokens/embedding"


def _params():
    return {"model": {"embed_tokens": {"embedding": 1}, "layers": {0: {"q": {"kernel": 2}}, 1: {"q": {"kernel": 3}}},
                      "norm": {"scale": 4}}, "score": {"kernel": 5}}


def test_partition_by_full_path_regexes_and_combine_back():
    params = _params()
    trained, frozen = partition(params, None, [EMBEDDING, r"model/layers/0/.*"])
    assert trained == {"model": {"layers": {1: {"q": {"kernel": 3}}}, "norm": {"scale": 4}}, "score": {"kernel": 5}}
    assert frozen == {"model": {"embed_tokens": {"embedding": 1}, "layers": {0: {"q": {"kernel": 2}}}}}
    assert combine(trained, frozen) == params
    # A linear probe: only the head trains; freeze wins over trainable.
    assert partition(params, ["score/.*"], None)[0] == {"score": {"kernel": 5}}
    assert partition(params, [r"model/layers/\d+/.*", "score/kernel"], ["score/kernel"])[0] == {
        "model": {"layers": {0: {"q": {"kernel": 2}}, 1: {"q": {"kernel": 3}}}}}
    assert partition(params, None, None) == (params, {})  # the default: everything trains, nothing frozen
    with pytest.raises(ValueError, match="model.freeze: 'embed_tokens' matches no parameter .* paths look like "
                                         "model/embed_tokens/embedding"):
        partition(params, None, ["embed_tokens"])  # a whole path must match
    with pytest.raises(ValueError, match="leave no parameter to train"):
        partition(params, None, [".*"])


def _config(tmp_path: Path, run_dir: Path, **sections) -> object:
    base = tiny_run_config(run_dir, algo="sft", max_steps=4, eval_batches=1,
                           data={"train": "builtin:sft", "eval": "builtin:sft#eval"},
                           optim={"lr": 3e-3, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.1},
                           checkpoint={"every_steps": 2, "every_minutes": 0, "keep": 0},
                           log={"every_steps": 1, "tensorboard": False, "sinks": ["jsonl"]}, **sections)
    base["model"]["freeze"] = [EMBEDDING]
    return load_config(write_config(tmp_path / f"{run_dir.name}.yaml", base))


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def test_frozen_embedding_trains_around_it_resumes_exactly_and_exports_whole(tmp_path):
    import torch
    import transformers

    run_dir = tmp_path / "run"
    trainer = Trainer(_config(tmp_path, run_dir))
    start_embedding = np.asarray(trainer.algo.frozen["frozen_params"]["model"]["embed_tokens"]["embedding"])
    start_trained = _host(trainer.state.params)
    assert "embed_tokens" not in trainer.state.params["model"]
    adam = trainer.state.opt_state[1][0]
    for moments in (adam.mu, adam.nu):  # the optimizer holds nothing for the frozen embedding
        assert "embed_tokens" not in moments["model"]
        assert jax.tree.structure(moments) == jax.tree.structure(trainer.state.params)
    result = trainer.run()
    assert result["step"] == 4
    final_trained = _host(trainer.state.params)
    np.testing.assert_array_equal(trainer.algo.frozen["frozen_params"]["model"]["embed_tokens"]["embedding"],
                                  start_embedding)
    moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(start_trained), jax.tree.leaves(final_trained))]
    assert min(moved) > 0  # every trained parameter moved (weight decay alone would move them)

    # The checkpoint holds the trained parameters and optimizer state only.
    metadata = json.loads((run_dir / "checkpoints" / "2" / "state" / "_METADATA").read_text())
    saved = json.dumps(metadata)
    assert "q_proj" in saved and "embed_tokens" not in saved

    # Resume from step 2 in a copy of the run: steps 3-4 and the final state are identical.
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(run_dir / "checkpoints" / "2", resumed_dir / "checkpoints" / "2")
    resumed = Trainer(_config(tmp_path, resumed_dir))
    assert resumed.run()["step"] == 4
    jax.tree.map(np.testing.assert_array_equal, final_trained, _host(resumed.state.params))
    straight, again = read_metrics(run_dir), read_metrics(resumed_dir)
    for step in (3, 4):
        assert again[step]["train/loss"] == straight[step]["train/loss"]

    # The export is the whole model: transformers loads it with the untouched embedding.
    export = run_dir / "export"
    hf = transformers.LlamaForCausalLM.from_pretrained(export)
    np.testing.assert_array_equal(hf.model.embed_tokens.weight.detach().numpy(), start_embedding)
    q_kernel = final_trained["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"]  # [hidden, heads, head_dim]
    np.testing.assert_allclose(hf.model.layers[0].self_attn.q_proj.weight.detach().numpy(),
                               q_kernel.reshape(q_kernel.shape[0], -1).T, atol=1e-6)
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    tokenizer = load_tokenizer("builtin")
    assert hf.config.vocab_size == len(tokenizer)
    with torch.no_grad():
        assert torch.isfinite(hf(ids).logits).all()


def test_a_linear_probe_reward_model_and_config_errors(tmp_path):
    config = tiny_run_config(tmp_path / "run", algo="rm")
    config["model"]["trainable"] = ["score/.*"]
    cfg = load_config(write_config(tmp_path / "rm.yaml", config))
    run = rm.setup(cfg, make_mesh(cfg.mesh, devices=jax.devices()[:1]), load_tokenizer("builtin"), total_steps=2)
    assert list(run.state.params) == ["score"] and "model" in run.frozen["frozen_params"]
    for model, message in [({"freeze": ["["]}, "model.freeze: '\\[' is not a regular expression"),
                           ({"trainable": "score/.*"}, "model.trainable must be a list")]:
        config = tiny_run_config(tmp_path / "run", algo="rm")
        config["model"].update(model)
        with pytest.raises(ConfigError, match=message):
            load_config(write_config(tmp_path / "bad.yaml", config))
    config = tiny_run_config(tmp_path / "run", algo="ppo", ppo={"reward_function": "m:f"})
    config["model"]["freeze"] = [EMBEDDING]
    with pytest.raises(ConfigError, match="not supported by algo ppo yet"):
        load_config(write_config(tmp_path / "ppo.yaml", config))


def test_the_plan_counts_optimizer_state_and_gradients_of_trained_parameters_only():
    from jaxalign import plan

    base = load_config("configs/quickstart/sft.yaml")
    frozen = load_config("configs/quickstart/sft.yaml", [f"model.freeze=[{EMBEDDING}]"])
    architecture = plan.read_model_config(base.model, vocab_size=1024)
    full, partial = (plan.estimate(cfg, 1, architecture=architecture) for cfg in (base, frozen))
    embedding = 1024 * 128 * 4  # vocab x hidden, float32 (tied: also the output head)
    assert partial.bytes_of("parameters") == full.bytes_of("parameters")
    for name, copies in (("optimizer state", 2), ("gradients", 1), ("update temporaries", 1)):
        assert full.bytes_of(name) - partial.bytes_of(name) == copies * embedding, name
