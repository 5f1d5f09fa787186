"""``jaxalign pipeline``: a tiny SFT -> RM -> DPO pipeline (a few steps each) trains, evaluates,
writes its table; a rerun skips finished stages; an interrupted stage resumes to the same
weights; bad configs fail with one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from jaxalign import cli, run_events
from jaxalign.pipeline import PipelineError, load_pipeline, run_pipeline
from tests.train_fixtures import TINY_LLAMA

COMMON = {"seed": 0, "log": {"every_steps": 1}, "data": {"batch_size": 8, "max_length": 96}}


def _stage(path, algo: str, steps: int, **extra) -> str:
    cfg = {"algo": algo, "max_steps": steps, **COMMON, **extra}
    cfg["data"] = {**COMMON["data"], **extra.get("data", {})}
    path.write_text(yaml.safe_dump(cfg))
    return path.name


def _pipeline(tmp_path, **changes) -> str:
    sft = _stage(tmp_path / "sft.yaml", "sft", 2, model={"tokenizer": "builtin:alignment", "config": dict(TINY_LLAMA)},
                 data={"train": "builtin:alignment_sft"})
    rm = _stage(tmp_path / "rm.yaml", "rm", 2, data={"train": "builtin:alignment_preferences"})
    dpo = _stage(tmp_path / "dpo.yaml", "dpo", 4, data={"train": "builtin:alignment_preferences"},
                 checkpoint={"every_steps": 2, "keep": 0, "async_save": False})
    eval_run = {"prompts": "builtin:alignment_prompts#eval", "max_prompts": 8, "max_new_tokens": 8, "batch_size": 8,
                "num_generations": 1, "checkers": ["alignment"]}
    tree = {
        "run_dir": str(tmp_path / "runs"),
        "stages": {"sft": {"config": sft}, "rm": {"config": rm, "set": {"model.path": "${sft}"}, "eval": False},
                   "dpo": {"config": dpo, "set": {"model.path": "${sft}"}}},
        "eval": {"reference": "${sft}", "rewards": [{"model": "${rm}"}],
                 "runs": [{"name": "greedy", "temperature": 0, "reference": "none", **eval_run},
                          {"name": "sampled", "temperature": 1.0, **eval_run}]},
        **changes,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return str(path)


def _weights(export) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(export / "model.safetensors"))


@pytest.mark.slow  # ~110 s CPU: three stages, two evaluations each (jit compiles dominate)
def test_pipeline_trains_evaluates_skips_on_rerun_and_resumes_an_interrupted_stage(tmp_path):
    config = _pipeline(tmp_path)
    lines: list[str] = []
    table = run_pipeline(config, log=lines.append)
    runs = tmp_path / "runs"
    assert [line.split(":")[0] for line in lines if "training" in line] == ["stage sft", "stage rm", "stage dpo"]
    text = table.read_text()
    header = text.splitlines()[2]
    for column in ("decline (greedy)", "help (greedy)", "reward (greedy)", "KL to ref (sampled)", "tokens (greedy)"):
        assert column in header
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) == {"stage", "sft", "dpo"}  # the reward model is not a policy row
    sampled = json.loads((runs / "sft" / "eval" / "sampled.json").read_text())["metrics"]
    assert sampled["kl"] == 0.0 and sampled["replies"] == 8  # the reference itself
    dpo_sampled = json.loads((runs / "dpo" / "eval" / "sampled.json").read_text())["metrics"]
    assert dpo_sampled["kl"] != 0.0 and 0.0 <= dpo_sampled["alignment/decline_rate"] <= 1.0
    assert set(json.loads((runs / "timings.json").read_text())) == {"sft", "rm", "dpo"}
    trained = _weights(runs / "dpo" / "export")

    # A rerun trains and evaluates nothing.
    lines.clear()
    before = (runs / "dpo" / "eval" / "greedy.json").stat().st_mtime_ns
    assert run_pipeline(config, log=lines.append).read_text() == text
    assert lines == [f"stage {name}: finished earlier, skipped ({runs / name / 'export'})" for name in ("sft", "rm", "dpo")]
    assert (runs / "dpo" / "eval" / "greedy.json").stat().st_mtime_ns == before

    # Interrupted after its step-2 checkpoint: no export, no finish event, no later checkpoint.
    shutil.rmtree(runs / "dpo" / "export")
    shutil.rmtree(runs / "dpo" / "checkpoints" / "4")
    shutil.rmtree(runs / "dpo" / "eval")
    events = (runs / "dpo" / run_events.EVENTS_FILE).read_text().splitlines()
    kept = [line for line in events if json.loads(line)["step"] <= 2 and json.loads(line)["kind"] != "finish"]
    (runs / "dpo" / run_events.EVENTS_FILE).write_text("\n".join(kept) + "\n")
    lines.clear()
    run_pipeline(config, log=lines.append)
    assert f"stage dpo: resuming in {runs / 'dpo'}" in lines
    assert any(e["kind"] == "resume" and e["step"] == 2 for e in run_events.read(runs / "dpo"))
    resumed = _weights(runs / "dpo" / "export")
    for name, value in trained.items():
        np.testing.assert_allclose(resumed[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert (runs / "dpo" / "eval" / "greedy.json").is_file()


def test_a_finished_stage_whose_config_changed_is_an_error_not_a_silent_reuse(tmp_path):
    config = _pipeline(tmp_path, eval={})
    tree = yaml.safe_load(open(config))
    tree["stages"] = {"sft": tree["stages"]["sft"]}
    open(config, "w").write(yaml.safe_dump(tree))
    run_pipeline(config, log=lambda line: None)
    tree["stages"]["sft"]["set"] = {"optim.lr": 0.5}
    open(config, "w").write(yaml.safe_dump(tree))
    with pytest.raises(PipelineError, match=r"stage sft: .* finished with a different config \(optim.lr: 1e-05 -> 0.5\)"):
        run_pipeline(config, log=lambda line: None)


@pytest.mark.parametrize("change, message", [
    ({"stages": {}}, "'stages' is missing or empty"),
    ({"stages": {"dpo": {"config": "dpo.yaml", "set": {"model.path": "${sft}"}}}},
     r"stages.dpo.set: \$\{sft\} names no earlier stage \(it is the first stage\)"),
    ({"stages": {"sft": {"config": "nope.yaml"}}}, r"stages.sft.config: file not found: .*nope.yaml"),
    ({"stages": {"sft": {"config": "sft.yaml", "sett": {}}}}, "stages.sft: unknown key 'sett'"),
    ({"stages": {"sft": {"config": "sft.yaml", "set": {"run_dir": "x"}}}}, "stages.sft.set.run_dir: the pipeline sets"),
    ({"eval": {"runs": [{"name": "a", "prompts": "p", "temprature": 0}]}},
     r"eval.runs\[0\]: unknown key 'temprature' \(did you mean 'temperature'\?\)"),
    ({"eval": {"runs": [{"name": "a"}]}}, r"eval.runs\[0\]: 'prompts' .* is required"),
    ({"eval": {"runs": [{"prompts": "p", "checkers": ["nope"]}]}}, r"eval.runs\[0\].checkers: unknown checker 'nope'; registered: .*alignment"),
    ({"sweeps": {"ppo": {"ppo.kl_coef": [0.1]}}}, "sweeps: unknown key 'ppo'"),
    ({"stagez": {}}, "unknown key 'stagez'; known keys: run_dir, stages, sweeps, eval"),
])
def test_bad_pipeline_configs_fail_with_one_line_naming_the_key(tmp_path, change, message):
    config = _pipeline(tmp_path, **change)
    with pytest.raises(PipelineError, match=message):
        load_pipeline(config, sweeps=True)


def test_cli_reports_a_bad_config_in_one_line_and_sweeps_add_one_stage_per_value(tmp_path, capsys):
    assert cli.main(["pipeline", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config file not found" in err and "missing.yaml" in err
    config = _pipeline(tmp_path, sweeps={"dpo": {"loss.beta": [0.05, 0.5]}})
    names = [stage.name for stage in load_pipeline(config, sweeps=True).stages]
    assert names == ["sft", "rm", "dpo", "dpo-beta=0.05", "dpo-beta=0.5"]
    assert "loss.beta=0.5" in load_pipeline(config, sweeps=True).stages[-1].overrides
    assert [stage.name for stage in load_pipeline(config).stages] == ["sft", "rm", "dpo"]


def test_a_stage_evaluated_after_it_finished_stays_finished_and_its_eval_is_redone_only_for_a_new_spec(tmp_path):
    from jaxalign.pipeline.evaluate import eval_spec, is_current
    from jaxalign.pipeline.runner import is_finished

    pipeline = load_pipeline(_pipeline(tmp_path))
    stage = pipeline.stage("sft")
    (stage.export).mkdir(parents=True)
    (stage.export / "config.json").write_text("{}")
    kinds = ["start", "checkpoint", "finish", "eval", "checkpoint"]  # jaxalign eval appends after finish
    (stage.run_dir / run_events.EVENTS_FILE).write_text(
        "".join(json.dumps({"time": 0, "step": 4, "kind": kind}) + "\n" for kind in kinds))
    assert is_finished(stage)
    (stage.run_dir / run_events.EVENTS_FILE).write_text(
        "".join(json.dumps({"time": 0, "step": 4, "kind": kind}) + "\n" for kind in ["start", "finish", "resume"]))
    assert not is_finished(stage)  # resumed after finishing (more steps): not finished until its next finish

    spec = pipeline.evals[0]
    assert spec == eval_spec(dict(spec))  # a full EvalSpec: reloading it changes nothing
    (stage.run_dir / "eval").mkdir()
    (stage.run_dir / "eval" / "greedy.json").write_text(json.dumps({"metrics": {}, "spec": spec}))
    assert is_current(stage.run_dir, spec)
    assert not is_current(stage.run_dir, {**spec, "max_new_tokens": 9})
    assert not is_current(stage.run_dir, {**spec, "name": "other"})
    # A prompt file edited in place (same name, same spec) is measured again.
    from jaxalign.eval.spec import input_digests

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    on_file = {**spec, "prompts": str(prompts)}
    (stage.run_dir / "eval" / "greedy.json").write_text(
        json.dumps({"metrics": {}, "spec": on_file, "inputs": input_digests(on_file)}))
    assert is_current(stage.run_dir, on_file)
    prompts.write_text(json.dumps({"prompt": "Hello"}) + "\n")
    assert not is_current(stage.run_dir, on_file)


def test_an_eval_is_redone_when_a_model_folder_it_read_changed_in_place(tmp_path):
    """The evaluated export retrained in place, or a judge / reference / reward model folder
    rewritten (a stage rerun), makes the stored result stale; an untouched rerun reuses it."""
    import os

    from jaxalign.eval.spec import input_digests
    from jaxalign.pipeline.evaluate import is_current

    pipeline = load_pipeline(_pipeline(tmp_path))
    stage = pipeline.stage("dpo")
    folders = {name: tmp_path / name for name in ("export", "judge", "reference", "member")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"weights")
    spec = {**pipeline.evals[0], "judge": str(folders["judge"]), "reference": str(folders["reference"]),
            "rewards": [{"ensemble": "mean", "members": [str(folders["member"])]}]}
    (stage.run_dir / "eval").mkdir(parents=True)
    result = {"metrics": {}, "spec": spec, "target": str(folders["export"]),
              "inputs": input_digests(spec, str(folders["export"]))}
    (stage.run_dir / "eval" / "greedy.json").write_text(json.dumps(result))
    assert set(result["inputs"]) == {"target", *(f"model:{folders[n]}" for n in ("judge", "reference", "member"))}
    assert is_current(stage.run_dir, spec)
    for name, folder in folders.items():
        weights = folder / "model.safetensors"
        stat = weights.stat()
        weights.write_bytes(b"WEIGHTS")  # same size: the modification time tells it apart
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        assert not is_current(stage.run_dir, spec), name
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert is_current(stage.run_dir, spec), name
    (folders["judge"] / "extra.bin").write_bytes(b"")
    assert not is_current(stage.run_dir, spec)
    (folders["judge"] / "extra.bin").unlink()
    assert is_current(stage.run_dir, spec)
    stale = {**result, "inputs": {key: value for key, value in result["inputs"].items() if key != "target"}}
    (stage.run_dir / "eval" / "greedy.json").write_text(json.dumps(stale))
    assert not is_current(stage.run_dir, spec)  # measured before the target was fingerprinted
