"""LoRA exports PEFT loads, and PEFT adapters we load: logits equal within 1e-4 both ways.

The base is a tiny random transformers Llama (``save_pretrained``); PEFT is in the test extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers

from jaxalign.algos import common
from jaxalign.config import load_config
from jaxalign.models import load_pretrained
from jaxalign.models.lora import LoraConfig
from jaxalign.sharding import make_mesh
from jaxalign.trainer import Trainer
from tests.model_fixtures import make_causal_lm
from tests.train_fixtures import tiny_run_config, write_config

peft = pytest.importorskip("peft")

IDS = np.array([[5, 17, 42, 7, 99, 300, 12, 8], [1, 64, 3, 900, 23, 23, 511, 2]])
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "llama"
    make_causal_lm("llama", folder, seed=3, vocab_size=1024, hidden_size=64, intermediate_size=128,
                   num_attention_heads=4, num_key_value_heads=2)
    return folder


def _train(tmp_path: Path, base: Path, algo: str, lora: dict, trainable: list[str] | None = None):
    """A short run on ``base`` with a high learning rate, so the adapters move well away from zero."""
    data = {"train": "builtin:sft", "eval": "builtin:sft#eval"} if algo == "sft" else {}
    config = tiny_run_config(tmp_path / "run", algo=algo, max_steps=3, eval_batches=1, lora=lora,
                             model={"path": str(base), "tokenizer": "builtin", "trainable": trainable}, data=data,
                             optim={"lr": 2e-2, "warmup_steps": 0}, checkpoint={"every_steps": 100},
                             log={"every_steps": 1, "tensorboard": False, "sinks": ["jsonl"]})
    config["model"].pop("config")
    cfg = load_config(write_config(tmp_path / f"{algo}.yaml", config))
    trainer = Trainer(cfg)
    trainer.run()
    return trainer, cfg


def _our_model(trainer: Trainer, cfg, head: str):
    """The trained model, rebuilt from the run's own state (not from the export)."""
    from flax import nnx

    mesh = make_mesh(cfg.mesh)
    graphdef, _ = common.split_params(common.build_model(cfg.model, cfg, mesh, head, lora=cfg.lora))
    return nnx.merge(graphdef, common.with_frozen(trainer.state.params, trainer.algo.frozen))


def _peft_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits.float().numpy()


@pytest.mark.slow
def test_peft_loads_the_adapter_and_transformers_the_merged_model_with_our_logits(tmp_path, base):
    """SFT with rslora, every linear map adapted and the final norm trained fully: the adapter folder
    (PEFT's tensor names) on the HF base, the merged folder alone and the adapter read back as
    ``lora.init_from`` all give the logits of the trained model."""
    trainer, cfg = _train(tmp_path, base, "sft", {"rank": 4, "alpha": 8, "rslora": True, "export": "both"},
                          trainable=["model/norm/scale"])
    ours = np.asarray(_our_model(trainer, cfg, "causal_lm")(IDS))
    export = tmp_path / "run" / "export"

    config = json.loads((export / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve()) and config["use_rslora"] is True
    assert config["modules_to_save"] == ["model.norm"] and len(config["target_modules"]) == 2 * 7
    adapted = peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(base), export).eval()
    start = np.asarray(load_pretrained(base)(IDS))
    assert np.abs(ours - start).max() > 0.1  # training moved the model: the comparison below means something
    np.testing.assert_allclose(_peft_logits(adapted), ours, atol=TOLERANCE, rtol=0)

    merged = transformers.AutoModelForCausalLM.from_pretrained(export / "merged").eval()
    assert not (export / "merged" / "adapter_config.json").exists()
    np.testing.assert_allclose(_peft_logits(merged), ours, atol=TOLERANCE, rtol=0)
    assert (export / "tokenizer.json").exists() and (export / "merged" / "tokenizer.json").exists()

    again = load_pretrained(base, lora=LoraConfig(init_from=str(export)))
    np.testing.assert_allclose(np.asarray(again(IDS)), ours, atol=1e-5, rtol=0)


@pytest.mark.slow  # 29 CPU s (275 s wall at load 18) on 2 cores, 2026-12-03
def test_a_peft_adapter_starts_our_model_and_a_reward_model_adapter_loads_in_peft(tmp_path, base):
    # PEFT's own adapter, with B non-zero (init_lora_weights=False), read as lora.init_from.
    torch.manual_seed(0)
    model = peft.get_peft_model(transformers.LlamaForCausalLM.from_pretrained(base), peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)).eval()
    model.save_pretrained(tmp_path / "theirs")
    ours = load_pretrained(base, lora=LoraConfig(init_from=str(tmp_path / "theirs")))
    assert ours.adapters.rank == 4 and ours.adapters.alpha == 16.0
    np.testing.assert_allclose(np.asarray(ours(IDS)), _peft_logits(model), atol=TOLERANCE, rtol=0)

    # A reward model: attention adapters, the new score head trained fully (PEFT's modules_to_save).
    trainer, cfg = _train(tmp_path, base, "rm", {"rank": 2, "target_modules": "attention"})
    scores = np.asarray(_our_model(trainer, cfg, "score")(IDS, attention_mask=np.ones_like(IDS)))[:, -1]
    export = tmp_path / "run" / "export"
    config = json.loads((export / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["score"]
    classifier = transformers.LlamaForSequenceClassification.from_pretrained(base, num_labels=1, pad_token_id=0)
    adapted = peft.PeftModel.from_pretrained(classifier, export).eval()
    np.testing.assert_allclose(_peft_logits(adapted)[:, 0], scores, atol=TOLERANCE, rtol=0)
    assert np.abs(scores).max() > 1e-3


# ---------------------------------------------------------------- jaxalign export RUN_DIR --merged


def _export(capsys, *argv):
    from jaxalign import cli

    code = cli.main(["export", *map(str, argv)])
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_export_merged_from_a_checkpoint_loads_in_transformers_with_our_and_peft_merged_logits(tmp_path, base, capsys):
    """A DPO run's checkpoint (adapters only) merged into a full folder: transformers' logits equal the
    trained model's and PEFT's merge_and_unload of the run's own adapter export within 1e-4. Bad input
    on the same run: an existing --out and a missing --step are one line and write nothing."""
    trainer, cfg = _train(tmp_path, base, "dpo", {"rank": 4, "alpha": 8})
    ours = np.asarray(_our_model(trainer, cfg, "causal_lm")(IDS))
    run = tmp_path / "run"
    code, err = _export(capsys, run, "--merged")
    folder = run / "export-step3-merged"
    assert code == 0 and f"step 3: a Hugging Face model in {folder}" in err, err
    assert not (folder / "adapter_config.json").exists() and (folder / "tokenizer.json").exists()
    merged = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert np.abs(ours - np.asarray(load_pretrained(base)(IDS))).max() > 0.1  # the adapters moved the model
    np.testing.assert_allclose(_peft_logits(merged), ours, atol=TOLERANCE, rtol=0)
    theirs = peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(base), run / "export")
    np.testing.assert_allclose(_peft_logits(merged), _peft_logits(theirs.merge_and_unload().eval()), atol=TOLERANCE,
                               rtol=0)

    from tests.test_bad_input import assert_one_line

    assert_one_line(*_export(capsys, run, "--merged"), 1, f"{folder} already exists; pass --out with a new folder")
    assert_one_line(*_export(capsys, run, "--step", 7, "--out", tmp_path / "x"), 1,
                    "no checkpoint for step 7 in", "have [3]")
    assert_one_line(*_export(capsys, tmp_path, "--merged"), 2, f"{tmp_path} is not a run directory (no config.yaml)")
    assert not (tmp_path / "x").exists() and not list(run.glob(".*partial"))


@pytest.mark.slow
def test_export_merged_of_a_run_without_lora_writes_its_whole_model_and_says_so(tmp_path, base, capsys):
    trainer, cfg = _train(tmp_path, base, "sft", None)
    code, err = _export(capsys, tmp_path / "run", "--merged", "--out", tmp_path / "plain")
    assert code == 0 and "trained no LoRA adapters: nothing to merge, wrote its whole model (a plain export)" in err
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    np.testing.assert_allclose(_peft_logits(exported), np.asarray(_our_model(trainer, cfg, "causal_lm")(IDS)),
                               atol=TOLERANCE, rtol=0)
