"""LoRA (``lora:``, jaxalign/models/lora.py): adapters start at the base, shard like their kernels and
are the only trained part; the DPO reference is the base with adapters off (no copy); checkpoints
hold adapters and their optimizer state; resume is exact; bad input gets one clear line."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxalign import cli
from jaxalign.algos import common, dpo
from jaxalign.config import ModelSpec, load_config
from jaxalign.data import build_pipeline, load_tokenizer
from jaxalign.models import ModelConfig, init_model
from jaxalign.models.lora import LoraConfig, adapted_modules, select_modules
from jaxalign.sharding import MeshConfig, make_mesh, rules_from, shard_batch
from jaxalign.trainer import Trainer
from tests.test_bad_input import assert_one_line
from tests.train_fixtures import TINY_LLAMA, resume_from_copy, tiny_run_config, write_config

IDS = jnp.array([[5, 17, 42, 7, 99, 300, 12, 8]])


def _model_config(**extra) -> ModelConfig:
    return ModelConfig.from_hf({**TINY_LLAMA, "vocab_size": 1024, **extra})


def _config(tmp_path, algo="dpo", lora=None, **sections):
    config = tiny_run_config(tmp_path / "run", algo=algo, lora=lora if lora is not None else {"rank": 4}, **sections)
    return load_config(write_config(tmp_path / f"{algo}.yaml", config))


def test_adapters_start_at_the_base_shard_like_their_kernels_and_alone_train():
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    lora = LoraConfig(rank=4, alpha=8, target_modules=["attention", "up_proj"])
    model = init_model(_model_config(), mesh=mesh, rules=rules_from(None), lora=lora)
    base = init_model(_model_config(), mesh=mesh, rules=rules_from(None))
    assert sorted({path.rsplit("/", 1)[1] for path in adapted_modules(model)}) == [
        "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    np.testing.assert_array_equal(model(IDS), base(IDS))  # B starts at zero
    q_proj = model.model.layers[0].self_attn.q_proj  # kernel [embed, heads, head_dim] = [64, 8, 8]
    a, b = q_proj.lora_a[...], q_proj.lora_b[...]
    assert a.shape == (64, 4) and b.shape == (4, 8, 8) and q_proj.lora_scale == 2.0
    assert a.sharding.spec == P("fsdp", None) and b.sharding.spec == P(None, "tensor", None)
    assert 0 < float(jnp.abs(a).max()) <= 1 / 8 and not np.any(np.asarray(b))  # U(+-1/sqrt(64)), zeros
    graphdef, params = common.split_params(model)
    trained, frozen = common.trainable_split(ModelSpec(config={}), params, lora)
    assert {path for path, _ in _leaves(trained)} == {p + "/" + k for p in adapted_modules(model) for k in ("lora_a", "lora_b")}
    assert not any(path.endswith(("lora_a", "lora_b")) for path, _ in _leaves(frozen["frozen_params"]))
    assert LoraConfig(rank=16, alpha=8, rslora=True).spec().scale == 2.0  # alpha / sqrt(rank)


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def test_target_modules_presets_regexes_and_names():
    paths = [f"model/layers/{i}/{part}" for i in range(2) for part in
             ("self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/o_proj",
              "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")]
    assert len(select_modules(paths, ["all-linear"])) == 14
    assert select_modules(paths, ["mlp"]) == [p for p in paths if "/mlp/" in p]
    assert select_modules(paths, [r"model/layers/1/self_attn/(q|v)_proj"]) == [
        "model/layers/1/self_attn/q_proj", "model/layers/1/self_attn/v_proj"]
    assert select_modules(paths, ["q_proj", "v_proj"]) == [p for p in paths if p.endswith(("q_proj", "v_proj"))]
    with pytest.raises(ValueError, match=r"'qkv' matches no module; the model's modules are q_proj, k_proj, v_proj, "
                                         r"o_proj, gate_proj, up_proj, down_proj \(paths like "
                                         r"model/layers/0/self_attn/q_proj, layers 0-1\)"):
        select_modules(paths, ["qkv"])


def test_dropout_masks_differ_by_module_and_step_and_stay_off_in_eval():
    lora = LoraConfig(rank=4, dropout=0.5)
    model = init_model(_model_config(), lora=lora)
    graphdef, params = common.split_params(model)
    q_proj = model.model.layers[0].self_attn.q_proj
    q_proj.lora_b[...] = jnp.ones_like(q_proj.lora_b[...])  # so the adapter's output shows
    _, params = common.split_params(model)

    def logits(key):
        return common.merge_model(graphdef, params, key)(IDS)

    key = jax.random.key(0)
    eval_out = logits(None)
    np.testing.assert_array_equal(eval_out, nnx.merge(graphdef, params)(IDS))
    np.testing.assert_array_equal(logits(key), logits(key))  # deterministic per key
    assert np.abs(logits(key) - eval_out).max() > 1e-3
    assert np.abs(logits(key) - logits(jax.random.fold_in(key, 1))).max() > 1e-3


def test_dpo_reference_is_the_base_with_adapters_off_and_holds_no_copy(tmp_path):
    """The reference's log-probs equal the base model's; the frozen input holds the base once
    (plus starting values of base parameters that train too, and nothing else)."""
    mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    tokenizer = load_tokenizer("builtin")
    cfg = _config(tmp_path, loss={"name": "sigmoid", "beta": 0.5}, optim={"lr": 1e-2, "warmup_steps": 0})
    run = dpo.setup(cfg, mesh, tokenizer, total_steps=4)
    base = common.build_model(cfg.model, cfg, mesh, "causal_lm", tokenizer)  # the same seed, no adapters
    _, base_params = common.split_params(base)
    assert set(run.frozen) == {"frozen_params"}
    frozen_leaves = jax.tree.leaves(run.frozen)
    assert len({id(leaf) for leaf in frozen_leaves}) == len(frozen_leaves) == len(jax.tree.leaves(base_params))
    assert sum(leaf.nbytes for leaf in frozen_leaves) == sum(leaf.nbytes for leaf in jax.tree.leaves(base_params))

    batch = shard_batch(next(build_pipeline(cfg.data, tokenizer, split="train", kind="preference").iterator()), mesh)
    state, first = jax.jit(run.train_step)(run.state, batch, run.frozen)
    # The adapters start at zero: the policy is its reference (up to XLA's summation order).
    assert float(first["rewards/margins"]) == pytest.approx(0, abs=1e-5)
    # So the loss is log 2 to first order in the margins: -log sigmoid(m) = log 2 - m / 2 + O(m^2).
    # (The margins themselves differ from 0 by rounding that varies with the CPU: 3e-6 on an Intel Xeon.)
    assert float(first["loss"]) == pytest.approx(np.log(2) - float(first["rewards/margins"]) / 2, abs=1e-6)
    ref_graphdef, _ = common.starting_reference(common.build_model(cfg.model, cfg, mesh, "causal_lm", tokenizer,
                                                                   lora=cfg.lora), None, state.params)
    reference = nnx.merge(ref_graphdef, common.reference_params(run.frozen))
    sums = jax.jit(lambda model: common.completion_logps(model, batch)["sums"])
    np.testing.assert_array_equal(sums(reference), sums(base))
    _, second = jax.jit(run.train_step)(state, batch, run.frozen)
    assert abs(float(second["rewards/margins"])) > 1e-4  # the policy moved away from its reference

    # Base parameters trained too: the reference keeps their starting values, and only theirs.
    cfg = _config(tmp_path, model={"trainable": ["model/norm/scale"]})
    run = dpo.setup(cfg, mesh, tokenizer, total_steps=4)
    assert set(run.frozen) == {"frozen_params", "ref_trained"}
    assert [path for path, _ in _leaves(run.frozen["ref_trained"])] == ["model/norm/scale"]


@pytest.mark.slow
def test_lora_dpo_resumes_exactly_and_checkpoints_hold_adapters_only(tmp_path):
    """Dropout on, reference log-probs precomputed: steps 3-4 after resuming from step 2 repeat
    the straight run's metrics and parameters exactly."""
    def config(run_dir):
        sections = dict(max_steps=4, eval_batches=1, precompute_ref_logps=True,
                        optim={"lr": 1e-2, "warmup_steps": 0}, checkpoint={"every_steps": 2, "every_minutes": 0},
                        log={"every_steps": 1, "tensorboard": False, "sinks": ["jsonl"]})
        config = tiny_run_config(run_dir, algo="dpo", lora={"rank": 4, "dropout": 0.1, "export": "merged"}, **sections)
        return load_config(write_config(tmp_path / f"{run_dir.name}.yaml", config))

    straight = Trainer(config(tmp_path / "run"))
    straight.run()
    metadata = json.dumps(json.loads((tmp_path / "run" / "checkpoints" / "2" / "state" / "_METADATA").read_text()))
    assert "lora_a" in metadata and "lora_b" in metadata
    assert not any(name in metadata for name in ("kernel", "embedding", "scale"))
    adam = straight.state.opt_state[1][0]
    assert jax.tree.structure(adam.mu) == jax.tree.structure(straight.state.params)

    first, again = resume_from_copy(straight, config, tmp_path / "run", tmp_path / "resumed", 2,
                                    files=("ref_logps_train.npy",))
    for step in (3, 4):
        assert again[step]["train/loss"] == first[step]["train/loss"]
    assert first[4]["train/loss"] != first[3]["train/loss"]
    assert (tmp_path / "run" / "export" / "config.json").exists()  # export: merged writes a full folder
    assert not (tmp_path / "run" / "export" / "adapter_config.json").exists()


# ---------------------------------------------------------------- bad input, through the CLI


@pytest.fixture
def cli_config(tmp_path):
    def make(**sections):
        return str(write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "run", **sections)))
    return make


def _main(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("lora, fragments", [
    ({"target_modules": ["qkv_proj"]},
     ["lora.target_modules: 'qkv_proj' matches no module; the model's modules are q_proj, k_proj, v_proj, o_proj, "
      "gate_proj, up_proj, down_proj (paths like model/layers/0/self_attn/q_proj, layers 0-1); presets: attention"]),
    ({"rank": 40, "target_modules": "attention"},
     ["lora.rank: rank 40 is larger than the 64 x 32 matrix it adapts (at most 32) at model/layers/0/self_attn/k_proj"]),
], ids=["target-matches-nothing", "rank-too-large"])
def test_bad_targets_and_ranks_are_one_line(cli_config, capsys, lora, fragments):
    assert_one_line(*_main(capsys, "train", cli_config(lora=lora)), 1, *fragments)


@pytest.mark.parametrize("override, fragment", [
    ("lora.export=full", "lora.export must be one of adapter, merged, both, got 'full'"),
    ("lora.rank=0", "lora.rank must be a positive integer, got 0"),
    ("lora.dropout=1", "lora.dropout must be in [0, 1), got 1"),
    ("lora.target_modules=['(']", "lora.target_modules: '(' is not a regular expression"),
])
def test_bad_lora_values_are_config_errors(cli_config, capsys, override, fragment):
    assert_one_line(*_main(capsys, "train", cli_config(lora={}), "--set", override), 2, fragment)


@pytest.mark.parametrize("export", ["adapter", "both"])
def test_an_ordinal_reward_model_refuses_an_adapter_export_at_startup(cli_config, capsys, export):
    """Learned thresholds live in config.json, which a PEFT adapter folder lacks: one line before any training."""
    code, err = _main(capsys, "train", cli_config(
        algo="rm", lora={"export": export}, loss={"name": "ordinal"},
        data={"train": "builtin:ratings", "eval": None, "rating_scale": [1, 5]}))
    assert_one_line(code, err, 2, f"lora.export: {export} writes a PEFT adapter folder", "set lora.export: merged")


def test_an_adapter_for_another_base_names_both(tmp_path, capsys):
    """A PEFT folder whose base_model_name_or_path is another model: one line naming both."""
    from tests.model_fixtures import make_causal_lm

    base = tmp_path / "base"
    make_causal_lm("llama", base, vocab_size=1024)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                             "base_model_name_or_path": "meta-llama/Llama-3.2-1B"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    config = tiny_run_config(tmp_path / "run", algo="sft", data={"train": "builtin:sft", "eval": None},
                             model={"path": str(base), "tokenizer": "builtin"}, lora={"init_from": str(adapter)})
    config["model"].pop("config")
    code, err = _main(capsys, "train", str(write_config(tmp_path / "c.yaml", config)))
    assert_one_line(code, err, 1, f"lora.init_from: {adapter} was trained on base model 'meta-llama/Llama-3.2-1B'",
                    f"but model.path is '{base}'")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_docs_yaml_examples_are_valid_configs():
    """docs/lora.md's YAML blocks: the full section and the DPO run parse with every value checked."""
    import re
    from pathlib import Path

    import yaml

    from jaxalign.config import TrainConfig
    from jaxalign.configlib import from_dict

    docs = (Path(__file__).resolve().parent.parent / "docs" / "lora.md").read_text()
    section, run = (yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", docs, flags=re.S))
    assert LoraConfig(**section["lora"]).spec().scale == 2.0
    cfg = from_dict(TrainConfig, run)
    assert cfg.algo == "dpo" and cfg.lora.rank == 16 and cfg.lora.targets == ("all-linear",)


def test_an_algorithm_that_does_not_declare_lora_support_refuses_the_section(cli_config, capsys):
    """A user's algorithm that never reads ``lora:`` (supports_lora is off by default) must not
    silently train the whole model: one line, exit 2."""
    code, err = _main(capsys, "train", cli_config(algo="tests.user_algos_helper:ScaledNLL", lora={"rank": 4},
                                                  data={"train": "builtin:sft", "eval": None}))
    assert_one_line(code, err, 2, "lora: algo tests.user_algos_helper:ScaledNLL does not train LoRA adapters",
                    "supports_lora = True")
