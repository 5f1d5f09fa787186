"""The memory planner: its arithmetic, its knobs, the CLI, and its estimate
against XLA's own ``memory_analysis()`` of the compiled train step on CPU."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from jaxalign import cli, plan
from jaxalign.config import load_config
from jaxalign.data import load_tokenizer
from jaxalign.plan_report import knobs
from jaxalign.sharding import batch_divisor, batch_sharding, make_mesh, replicated
from tests.train_fixtures import TINY_LLAMA, tiny_run_config, write_config

LLAMA3_8B = "configs/examples/models/llama3_8b.json"
V5P_EXAMPLE = "configs/examples/llama3_8b_dpo_v5p64.yaml"
GIB = 1024**3


@pytest.fixture(scope="module")
def llama3_8b():
    return plan.read_model_config(load_config(V5P_EXAMPLE).model, LLAMA3_8B)


def _small_config(tmp_path, algo: str, architecture: dict, data: dict, mesh: dict, **sections):
    config = tiny_run_config(tmp_path / "run", algo=algo, mesh=mesh, **sections)
    config["model"]["config"] = {**TINY_LLAMA, **architecture}
    config["data"].update(data)
    return load_config(write_config(tmp_path / "c.yaml", config))


# ---------------------------------------------------------------- arithmetic on a real architecture


def test_llama3_8b_parameters_and_optimizer_split_over_fsdp(llama3_8b):
    cfg = load_config(V5P_EXAMPLE)
    estimate = plan.estimate(cfg, 32, 95, architecture=llama3_8b)
    assert estimate.param_count == pytest.approx(8.03e9, rel=0.005)
    assert estimate.mesh == {"data": 1, "fsdp": 32, "tensor": 1}
    # float32 parameters over 32 chips (norm scales are replicated: tiny)
    assert estimate.bytes_of("parameters") == pytest.approx(estimate.param_count * 4 / 32, rel=0.01)
    assert estimate.bytes_of("optimizer state") == 2 * estimate.bytes_of("parameters")
    assert estimate.bytes_of("frozen reference") == pytest.approx(estimate.bytes_of("parameters") / 2, rel=1e-6)
    assert estimate.workload == plan.Workload(rows=4, length=2048, targets=2048)
    assert estimate.fits and estimate.total < 0.5 * estimate.hbm_bytes  # the example's stated headroom


def test_remat_policies_order_activations_and_gathered_weights(llama3_8b):
    cfg = load_config(V5P_EXAMPLE)
    by_policy = {}
    for policy in ("none", "dots", "full"):
        changed = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, remat=policy))
        by_policy[policy] = plan.estimate(changed, 32, architecture=llama3_8b)
    saved = {p: e.bytes_of("activations: saved") for p, e in by_policy.items()}
    assert saved["none"] > 5 * saved["dots"] > 5 * saved["full"]
    # Without remat the forward's all-gathered weights stay for the backward: all 32 layers.
    gathered = {p: e.bytes_of("gathered weights") for p, e in by_policy.items()}
    assert gathered["none"] > 5 * gathered["full"] and gathered["dots"] == gathered["full"]
    # full remat keeps one [rows, L, hidden] bfloat16 tensor per layer
    assert saved["full"] == 32 * 4 * 2048 * 4096 * 2


def test_knobs_each_lower_the_total_and_say_how(llama3_8b):
    cfg = load_config(V5P_EXAMPLE, ["model.remat=none", "mesh.data=4", "mesh.fsdp=8", "ref_model=null"])
    estimate = plan.estimate(cfg, 32, 95, architecture=llama3_8b)
    assert not estimate.fits
    found = {knob.description: knob for knob in knobs(cfg, estimate, llama3_8b)}
    assert all(knob.total < estimate.total for knob in found.values())
    assert found["recompute activations in the backward (remat=full)"].how == "--set model.remat=full"
    fsdp = found["shard parameters and optimizer over all data-parallel devices (fsdp=32)"]
    assert fsdp.how == "--set mesh.data=1 --set mesh.fsdp=32"
    bf16 = found["keep the frozen reference in bfloat16"]
    assert "ref_model.param_dtype=bfloat16" in bf16.how
    assert estimate.total - bf16.total == pytest.approx(estimate.bytes_of("frozen reference") / 2, rel=1e-6)
    precomputed = found["precompute reference log-probs before training (no reference in memory)"]
    assert estimate.total - precomputed.total == estimate.bytes_of("frozen reference")
    assert any(knob.total <= estimate.hbm_bytes for knob in found.values())


def test_reference_free_and_reward_models_hold_no_reference(llama3_8b):
    cfg = load_config(V5P_EXAMPLE, ["loss.name=simpo", "ref_model=null"])
    assert plan.estimate(cfg, 32, architecture=llama3_8b).bytes_of("frozen reference") == 0
    cfg = load_config(V5P_EXAMPLE, ["algo=rm", "loss.name=bradley_terry", "ref_model=null"])
    reward = plan.estimate(cfg, 32, architecture=llama3_8b)
    assert reward.bytes_of("frozen reference") == 0
    assert reward.param_count < 7.6e9  # no lm_head: a score head of 4096 weights instead


def test_example_configs_fit_their_hardware():
    examples = {
        "configs/examples/llama3_8b_dpo_v5p64.yaml": (32, 95, LLAMA3_8B),
        "configs/examples/llama3_8b_dpo_8xh100.yaml": (8, 79, LLAMA3_8B),
        "configs/examples/qwen3_1_7b_rm_v5e8.yaml": (8, 15.75, "configs/examples/models/qwen3_1_7b.json"),
    }
    for path, (devices, hbm, architecture) in examples.items():
        cfg = load_config(path)
        estimate = plan.estimate(cfg, devices, hbm, architecture=plan.read_model_config(cfg.model, architecture))
        # Headroom for the estimate's error (see test_estimate_matches_xla) and XLA's own buffers.
        assert estimate.total < 0.75 * estimate.hbm_bytes, (path, estimate.total / GIB)


# ---------------------------------------------------------------- the command line


def test_plan_command_prints_the_breakdown_and_exits_3_when_it_does_not_fit(capsys):
    code = cli.main(["plan", "configs/quickstart/dpo.yaml", "--devices", "8", "--hbm-gib", "1"])
    out = capsys.readouterr().out
    assert code == 0
    for line in ("parameters", "optimizer state", "gradients", "activations: saved", "frozen reference",
                 "fits in 1.00 GiB"):
        assert line in out
    code = cli.main(["plan", "configs/quickstart/dpo.yaml", "--devices", "8", "--hbm-gib", "0.02",
                     "--set", "model.remat=none"])
    out = capsys.readouterr().out
    assert code == 3 and "does NOT fit" in out and "--set model.remat=full" in out


def test_plan_command_reads_the_architecture_file_and_names_a_missing_one(capsys):
    code = cli.main(["plan", V5P_EXAMPLE, "--devices", "32", "--model-config", LLAMA3_8B])
    assert code == 0 and "8.03B parameters" in capsys.readouterr().out
    code = cli.main(["plan", V5P_EXAMPLE, "--devices", "32"])  # model.path is not on this machine
    err = capsys.readouterr().err
    assert code == 1 and "Meta-Llama-3-8B-Instruct/config.json not found" in err and "--model-config" in err
    code = cli.main(["plan", V5P_EXAMPLE, "--devices", "3", "--model-config", LLAMA3_8B, "--set", "mesh.fsdp=2"])
    assert code == 1 and "does not fit 3 device(s)" in capsys.readouterr().err


# ---------------------------------------------------------------- against XLA


def test_optimizer_moments_are_sharded_like_their_parameters(tmp_path):
    """The planner divides the optimizer state by fsdp; so must the trainer."""
    from jaxalign.algos import rm

    cfg = _small_config(tmp_path, "rm", {}, {}, {"data": 1, "fsdp": 8})
    run = rm.setup(cfg, make_mesh(cfg.mesh), load_tokenizer("builtin"), total_steps=4)
    adam = run.state.opt_state[1][0]
    for moments in (adam.mu, adam.nu):
        for param, moment in zip(jax.tree.leaves(run.state.params), jax.tree.leaves(moments)):
            assert moment.sharding == param.sharding
    assert any(len(leaf.sharding.device_set) == 8 and leaf.addressable_shards[0].data.size < leaf.size
               for leaf in jax.tree.leaves(adam.mu))


def _xla_bytes(cfg, workload: plan.Workload) -> int:
    """Live bytes per device of the compiled train step for the planner's worst-case batch."""
    mesh = make_mesh(cfg.mesh)
    run = cfg.algorithm.setup(cfg, mesh, load_tokenizer("builtin"), 10)
    rows, slots = workload.rows * batch_divisor(mesh), cfg.data.batch_size
    shapes = {name: (rows, workload.length) for name in ("input_ids", "positions", "segment_ids", "branch_ids")}
    # Targets are flat per row group, one group per device: [devices, rows a device * targets a row].
    shapes.update({name: (batch_divisor(mesh), workload.rows * workload.targets)
                   for name in ("target_index", "target_ids", "target_segment", "target_branch", "target_row")})
    shapes.update(end_index=(rows, slots, 2), example_mask=(rows, slots), example_id=(rows, slots))
    batch = {name: jax.ShapeDtypeStruct(shape, np.float32 if name == "example_mask" else np.int32,
                                        sharding=batch_sharding(mesh)) for name, shape in shapes.items()}
    return _live(_compiled_train_step(run, batch, mesh))


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _compiled_train_step(run, batch, mesh):
    """The train step compiled as the trainer jits it (state donated), every argument kept."""
    def shardings(tree):
        return jax.tree.map(lambda x: x.sharding, tree)

    step = jax.jit(run.train_step, in_shardings=(shardings(run.state), batch_sharding(mesh), shardings(run.frozen)),
                   out_shardings=(shardings(run.state), replicated(mesh)), donate_argnums=(0,), keep_unused=True)
    return step.lower(_abstract(run.state), batch, _abstract(run.frozen)).compile()


def _live(compiled, held_elsewhere: int = 0) -> int:
    """Live bytes per device while ``compiled`` runs: arguments + outputs not aliased to (donated)
    arguments + temporaries, plus what stays in memory without being an argument."""
    memory = compiled.memory_analysis()
    return (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes + held_elsewhere)


SMALL = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
         "num_hidden_layers": 4}
WIDE = {"hidden_size": 512, "intermediate_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 4,
        "num_hidden_layers": 4}


@pytest.mark.parametrize("algo, model, data, mesh, sections", [
    # data parallel: parameters, AdamW state and gradients dominate, activations ~30%
    ("rm", SMALL, {"batch_size": 8, "max_length": 128, "pad_to_multiple": 32}, {"data": 8}, {}),
    # DPO with the in-step reference: two rows of 256 tokens a device, activations ~40%
    ("dpo", SMALL, {"batch_size": 16, "max_length": 128, "pad_to_multiple": 32}, {"data": 8}, {}),
    # fsdp=8: sharded state, all-gathered weights dominate
    ("rm", WIDE, {"batch_size": 8, "max_length": 32}, {"data": 1, "fsdp": 8}, {}),
    # LoRA DPO, frozen base in bfloat16, adapters and their AdamW state in float32, dropout on, the
    # reference is the base with adapters off: the frozen base and activations dominate
    ("dpo", SMALL, {"batch_size": 16, "max_length": 128, "pad_to_multiple": 32}, {"data": 8},
     {"lora": {"rank": 16, "dropout": 0.1}, "model": {"param_dtype": "bfloat16"}}),
    # LoRA reward model over fsdp=8: attention adapters, the score head trained fully
    ("rm", WIDE, {"batch_size": 8, "max_length": 32}, {"data": 1, "fsdp": 8},
     {"lora": {"rank": 8, "target_modules": "attention"}}),
], ids=["rm-data8", "dpo-data8", "rm-fsdp8", "dpo-lora-bf16-base-data8", "rm-lora-fsdp8"])
def test_estimate_matches_xla_memory_analysis(tmp_path, algo, model, data, mesh, sections):
    cfg = _small_config(tmp_path, algo, model, data, mesh, **sections)
    architecture = plan.read_model_config(cfg.model, vocab_size=len(load_tokenizer("builtin")))
    estimate = plan.estimate(cfg, jax.device_count(), architecture=architecture)
    xla = _xla_bytes(cfg, estimate.workload)
    ratio = estimate.total / xla
    print(f"{algo} {mesh}: planner {estimate.total / 2**20:.1f} MiB, XLA {xla / 2**20:.1f} MiB, ratio {ratio:.3f}")
    assert 0.8 <= ratio <= 1.2


# ---------------------------------------------------------------- PPO against XLA


def _device_bytes(tree) -> int:
    return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree))


def _ppo_xla_bytes(cfg, prompt: int) -> dict[str, int]:
    """Live bytes per device of PPO's two largest programs at the planner's worst-case shapes:
    the update (the jitted train step on a rollout batch) and generation (the sampler, while
    the train state and the frozen models stay in memory)."""
    from flax import nnx

    from jaxalign.algos import common
    from jaxalign.generation.config import SamplingConfig
    from jaxalign.generation.sampler import _sample_jit, decode_shardings, stop_token_ids
    from jaxalign.sharding import logical_sharding, rules_from

    mesh, tokenizer = make_mesh(cfg.mesh), load_tokenizer("builtin")
    run = cfg.algorithm.setup(cfg, mesh, tokenizer, 10)
    held = _device_bytes(run.state) + _device_bytes(run.frozen)
    rows, new = cfg.data.batch_size, cfg.ppo.max_new_tokens
    shapes = {"prompt_ids": (prompt,), "prompt_mask": (prompt,), "segment_ids": (prompt + new,), "tokens": (new,)}
    shapes.update({name: (new,) for name in ("response_mask", "old_logps", "ref_logps", "old_values", "advantages",
                                             "returns")})
    shapes.update({name: () for name in ("example_mask", "example_id", "scores", "num_eos", "kl_sum",
                                         "non_score_sum")})
    ints = ("prompt_ids", "prompt_mask", "segment_ids", "tokens", "example_id")
    batch = {name: jax.ShapeDtypeStruct((rows, *shape), np.int32 if name in ints else np.float32,
                                        sharding=batch_sharding(mesh)) for name, shape in shapes.items()}
    update = _live(_compiled_train_step(run, batch, mesh))

    graphdef, _ = nnx.split(common.build_model(cfg.model, cfg, mesh, head="causal_lm", tokenizer=tokenizer,
                                               lora=cfg.lora))
    policy = common.with_frozen(run.state.params["policy"], run.frozen)  # the sampler's: adapters + base
    model_config = nnx.merge(graphdef, policy).config
    sampling = SamplingConfig(max_new_tokens=new, temperature=cfg.ppo.temperature, stop_token_ids=(1,))
    rules = rules_from(cfg.mesh)

    cache = (decode_shardings(mesh, model_config, rows, prompt, rules),  # prefill
             decode_shardings(mesh, model_config, rows, prompt + new - 1, rules))  # decode
    prompts = jax.ShapeDtypeStruct((rows, prompt), np.int32, sharding=logical_sharding(mesh, ("batch", None),
                                                                                        (rows, prompt), rules))
    sampler = _sample_jit.lower(graphdef, _abstract(policy), prompts, prompts, jax.random.key(0), cfg=sampling,
                                stop_ids=stop_token_ids(sampling, model_config.eos_token_id), num_samples=1,
                                cache_shardings=cache)
    generation = _live(sampler.compile(), held - _device_bytes(policy))
    return {"update": update, "generation": generation}


def _save_reward_model(path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    transformers.LlamaForSequenceClassification(config).save_pretrained(path)


@pytest.mark.parametrize("case", ["value-head-data8", "lora-value-head-data8",
                                  pytest.param("reward-model-bf16-long-replies", marks=pytest.mark.slow)])
def test_ppo_estimate_matches_xla_memory_analysis(tmp_path, case):
    """PPO's plan, phase by phase: held state + the update phase against the compiled train step,
    held state + the generation phase against the compiled sampler (the two programs that peak)."""
    sections = {}
    if case.endswith("value-head-data8"):  # update-heavy: a SMALL policy with its value head, 4 prompts a device
        model, data, ppo = SMALL, {"batch_size": 32, "max_prompt_length": 64, "max_length": 128,
                                   "pad_to_multiple": 16}, {"max_new_tokens": 64, "num_mini_batches": 2}
        if case.startswith("lora"):  # adapters train, the reference is the base with adapters off
            sections["lora"] = {"rank": 8}
    else:  # generation-heavy: long replies, many small minibatches, reward + value model from a folder, bf16 frozen
        _save_reward_model(tmp_path / "rm")
        model = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 8, "num_key_value_heads": 8,
                 "num_hidden_layers": 4}
        data = {"batch_size": 64, "max_prompt_length": 32, "max_length": 64, "pad_to_multiple": 16}
        ppo = {"max_new_tokens": 224, "num_mini_batches": 8, "reward_function": None,
               "reward_model": str(tmp_path / "rm"), "frozen_dtype": "bfloat16"}
    ppo = {"reward_function": "jaxalign.rewards_builtin:helpful_harmless", **ppo}
    cfg = _small_config(tmp_path, "ppo", model, data, {"data": 8}, ppo=ppo, **sections)
    architecture = plan.read_model_config(cfg.model, vocab_size=len(load_tokenizer("builtin")))
    estimate = plan.estimate(cfg, jax.device_count(), architecture=architecture)
    held = estimate.total - max(estimate.phase_bytes().values())
    prompt = estimate.workload.length - cfg.ppo.max_new_tokens
    xla = _ppo_xla_bytes(cfg, prompt)
    for phase, measured in xla.items():
        planned = held + estimate.phase_bytes()[phase]
        ratio = planned / measured
        print(f"ppo {case} {phase}: planner {planned / 2**20:.1f} MiB, XLA {measured / 2**20:.1f} MiB, ratio {ratio:.3f}")
        assert 0.8 <= ratio <= 1.2, (phase, planned, measured)
    assert estimate.total == held + max(estimate.phase_bytes().values())


def test_grpo_plan_counts_every_reply_and_the_reference_only_with_beta(tmp_path):
    """GRPO: the KV cache holds batch x num_generations rows, the update one of steps_per_generation
    minibatches; the reference is a full float32 copy with beta > 0 and none with beta 0; with LoRA
    the reference is the frozen base (no copy) and only the adapters have AdamW moments."""
    def estimate(grpo: dict, **sections):
        grpo = {"reward_funcs": [{"verifier": "exact_answer"}], "max_completion_length": 16, **grpo}
        cfg = _small_config(tmp_path, "grpo", SMALL, {"batch_size": 8, "max_length": 64, "max_prompt_length": 32,
                                                      "pad_to_multiple": 16}, {"data": 8}, grpo=grpo, **sections)
        architecture = plan.read_model_config(cfg.model, vocab_size=len(load_tokenizer("builtin")))
        return plan.estimate(cfg, 8, architecture=architecture)

    four = estimate({"num_generations": 4, "beta": 0.04})
    eight = estimate({"num_generations": 8, "beta": 0.04, "steps_per_generation": 2})
    assert eight.bytes_of("KV cache") == 2 * four.bytes_of("KV cache")  # 1 prompt a device x 4 or 8 replies
    assert four.workload == plan.Workload(rows=4, length=48, targets=16)
    assert eight.workload == plan.Workload(rows=4, length=48, targets=16)  # 8 replies in 2 minibatches
    assert four.bytes_of("frozen reference") == four.bytes_of("parameters")  # float32 copy of the policy
    assert four.bytes_of("optimizer state") == 2 * four.bytes_of("parameters")
    assert estimate({"num_generations": 4, "beta": 0.0}).bytes_of("frozen reference") == 0
    lora = estimate({"num_generations": 4, "beta": 0.04}, lora={"rank": 4})
    assert lora.bytes_of("frozen reference") == 0
    assert 0 < lora.bytes_of("optimizer state") < 0.1 * four.bytes_of("optimizer state")


def test_ppo_quickstart_plan_prints_through_the_cli(capsys):
    """The planner's knob search proposes only changes PPO accepts (no grad_accum_steps)."""
    code = cli.main(["plan", "configs/quickstart/ppo.yaml", "--devices", "1"])
    out = capsys.readouterr().out
    assert code == 0
    for line in ("frozen reference", "while generation", "KV cache", "while update", "activations: saved",
                 "--set ppo.num_mini_batches=4", "held throughout + the largest phase"):
        assert line in out, line
    assert "grad_accum_steps" not in out
    code = cli.main(["plan", "configs/quickstart/ppo.yaml", "--devices", "1", "--set", "ppo.reward_function=null",
                     "--set", "ppo.reward_model=/no/such/rm"])
    err = capsys.readouterr().err
    assert code == 1 and "ppo.reward_model: /no/such/rm/config.json not found" in err and "Traceback" not in err
