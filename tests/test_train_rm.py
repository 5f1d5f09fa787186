"""Reward-model training end to end: quality, export, resume, preemption, bad input, meshes."""

from __future__ import annotations

import json
import signal

import jax
import numpy as np
import pytest

from jaxalign import cli
from jaxalign.algos import rm
from jaxalign.config import load_config
from jaxalign.data import build_pipeline, load_tokenizer
from jaxalign.sharding import MeshConfig, make_mesh, shard_batch
from tests.train_fixtures import (
    finished_checkpoints,
    kill_and_resume,
    read_metrics,
    run_cli,
    start_cli,
    tiny_run_config,
    write_config,
)


@pytest.mark.slow
def test_quickstart_config_learns_and_exports(tmp_path):
    """The README's main job, shortened: held-out accuracy well above chance and
    an export that transformers loads and scores like jaxalign does."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir = tmp_path / "rm"
    result = run_cli("train", "configs/quickstart/rm.yaml", "--set", f"run_dir={run_dir}",
                     "--set", "max_steps=40", "--set", "eval_every=0")
    assert result.returncode == 0, result.stderr
    evals = read_metrics(run_dir, prefix="eval/")
    final = evals[max(evals)]
    assert final["eval/accuracy"] > 0.8
    assert final["eval/margin"] > 0.5

    export = run_dir / "export"
    hf_model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    texts = ["User: help me cheat on my exam\nAssistant: I can't help with that.", "User: hi\nAssistant: Hello!"]
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hf_scores = hf_model(**encoded).logits[:, 0].numpy()
    from jaxalign.models import load_pretrained

    ours = load_pretrained(export)
    mask = encoded["attention_mask"].numpy()
    per_position = np.asarray(ours(encoded["input_ids"].numpy(), attention_mask=mask))
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1) if tokenizer.padding_side == "left" else mask.sum(1) - 1
    np.testing.assert_allclose(per_position[np.arange(2), last], hf_scores, atol=1e-4)


@pytest.mark.slow
def test_sigkill_resume_matches_uninterrupted_run(tmp_path):
    config = tiny_run_config(tmp_path / "placeholder", max_steps=16)
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference_cfg = write_config(tmp_path / "reference.yaml", {**config, "run_dir": str(reference_dir)})
    resumed_cfg = write_config(tmp_path / "resumed.yaml", {**config, "run_dir": str(resumed_dir)})
    killed_after = kill_and_resume(reference_cfg, resumed_cfg, resumed_dir, 16)

    reference, resumed = read_metrics(reference_dir), read_metrics(resumed_dir)
    resumed_steps = [step for step in resumed if step > killed_after]
    assert resumed_steps and max(resumed_steps) == 16
    for step in resumed_steps:  # same batch at every step: no batch repeated or skipped
        assert resumed[step]["train/loss"] == reference[step]["train/loss"], step
    reference_weights = (reference_dir / "export" / "model.safetensors").read_bytes()
    assert (resumed_dir / "export" / "model.safetensors").read_bytes() == reference_weights


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_rerun_continues(tmp_path):
    run_dir = tmp_path / "run"
    config_path = write_config(tmp_path / "c.yaml", tiny_run_config(run_dir, max_steps=200,
                                                                     checkpoint={"every_steps": 50}))
    process = start_cli("train", str(config_path))
    # Wait until training is under way (the first logged step), then preempt.
    import time

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        metrics_file = run_dir / "metrics.jsonl"
        if metrics_file.exists() and "train/loss" in metrics_file.read_text():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output
    saved = finished_checkpoints(run_dir)
    assert saved and saved[-1] < 200 and saved[-1] % 50 != 0, (saved, output)
    rerun = run_cli("train", str(config_path), "--set", "max_steps=" + str(saved[-1] + 3))
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed from checkpoint at step {saved[-1]}" in rerun.stderr
    assert finished_checkpoints(run_dir)[-1] == saved[-1] + 3
    # events.jsonl tells the story: start, checkpoints, stop on SIGTERM; then start, resume, ..., finish.
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    stops = [e for e in events if e["kind"] == "stop"]
    assert len(stops) == 1 and stops[0]["step"] == saved[-1] and stops[0]["signal"] == "SIGTERM"
    after = events[events.index(stops[0]) + 1:]
    assert [e["kind"] for e in after[:2]] == ["start", "resume"] and after[1]["from_step"] == saved[-1]
    assert after[-1]["kind"] == "finish" and after[-1]["step"] == saved[-1] + 3


def _train_main(config_path, *overrides, capsys):
    code = cli.main(["train", str(config_path), *[arg for o in overrides for arg in ("--set", o)]])
    return code, capsys.readouterr().err


def test_bad_inputs_give_clear_messages_and_leave_checkpoints(tmp_path, capsys):
    run_dir = tmp_path / "run"
    good = write_config(tmp_path / "good.yaml", tiny_run_config(run_dir, max_steps=2, eval_batches=1))
    assert _train_main(good, capsys=capsys)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}

    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    code, err = _train_main(good, f"data.train={bad_rows}", "data.eval=null", "max_steps=4", capsys=capsys)
    assert code == 1 and "bad.jsonl:2" in err

    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"prompt": "a", "chosen": "b"}\n')
    code, err = _train_main(good, f"data.train={missing}", "data.eval=null", "data.format=preference",
                            "max_steps=4", capsys=capsys)
    assert code == 1 and "missing.jsonl:1" in err and "rejected" in err

    for name, line, expected in [
        ("empty.jsonl", '{"prompt": "a", "chosen": "", "rejected": "c"}', ["empty.jsonl:1", "chosen"]),
        ("number.jsonl", '{"prompt": "a", "chosen": 5, "rejected": "c"}', ["number.jsonl:1", "chosen"]),
        ("long.jsonl", '{"prompt": "' + "word " * 400 + '", "chosen": "b", "rejected": "c"}', ["long.jsonl:", "prompt"]),
    ]:
        path = tmp_path / name
        path.write_text((line + "\n") * 64)
        code, err = _train_main(good, f"data.train={path}", "data.eval=null", "data.format=preference",
                                "data.on_overlong=raise", "data.max_prompt_length=32", "max_steps=4", capsys=capsys)
        assert code == 1 and all(text in err for text in expected), (name, err)
        if name == "long.jsonl":  # caught while the shape ladder packs the first batches: before the run resumes
            assert "differs from the checkpoint's" not in err

    code, err = _train_main(good, "optim.learning_rate=1", capsys=capsys)
    assert code == 2 and "Did you mean 'optim.lr'" in err

    code, err = _train_main(good, "mesh.data=3", "max_steps=4", capsys=capsys)
    assert code == 1 and "does not fit 8 device(s)" in err

    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}
    assert after == before


@pytest.mark.parametrize("mesh", [dict(data=8), dict(data=1, fsdp=8), dict(data=2, fsdp=1, tensor=4),
                                  dict(data=2, fsdp=2, tensor=2)])
def test_same_loss_on_one_device_and_on_meshes(tmp_path, mesh):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "run")))
    tokenizer = load_tokenizer("builtin")
    pipeline = build_pipeline(cfg.data, tokenizer, kind="preference", row_multiple=8)
    host_batch = next(pipeline.iterator())

    def loss_and_step(mesh_cfg, devices):
        device_mesh = make_mesh(mesh_cfg, devices=devices)
        run = rm.setup(cfg, device_mesh, tokenizer, total_steps=10)
        batch = shard_batch(host_batch, device_mesh)
        eval_metrics = jax.jit(run.eval_step)(run.state, batch, run.frozen)
        _, train_metrics = jax.jit(run.train_step)(run.state, batch, run.frozen)
        return float(eval_metrics["loss"]), float(train_metrics["grad_norm"])

    single = loss_and_step(MeshConfig(data=1), jax.devices()[:1])
    sharded = loss_and_step(MeshConfig(**mesh), jax.devices())
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    from jaxalign.trainer import NonFiniteLossError, Trainer

    run_dir = tmp_path / "run"
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_run_config(run_dir, max_steps=8)))
    trainer = Trainer(cfg)
    real_step, calls = trainer.train_step, []

    def poisoned_step(state, batch, frozen):  # the 4th step's loss is NaN
        state, metrics = real_step(state, batch, frozen)
        calls.append(1)
        return state, {**metrics, "loss": metrics["loss"] * (np.nan if len(calls) == 4 else 1.0)}

    trainer.train_step = poisoned_step
    with pytest.raises(NonFiniteLossError, match="NaN or inf.*step 4.*intact"):
        trainer.run()
    assert finished_checkpoints(run_dir) == [2]
    resumed = Trainer(cfg)  # the surviving checkpoint restores and training continues
    assert resumed.run()["step"] == 8
