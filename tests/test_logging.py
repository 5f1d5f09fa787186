"""Sinks (JSONL, TensorBoard, console, W&B, a user's), their config, the progress bar,
and the text logger."""

import io
import json
import os
import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jaxalign.configlib import ConfigError, from_dict
from jaxalign.metrics_log import ProgressBar, get_logger
from jaxalign.sinks import BaseSink, LogConfig, Sinks, SinkError, open_sinks
from jaxalign.sinks.console import ConsoleSink
from jaxalign.sinks.jsonl import JsonlSink
from tests.user_sinks_helper import read_calls

USER_SINK = "tests.user_sinks_helper:RecordingSink"


def _open(run_dir, *names, **kwargs):
    return open_sinks([(name, {}) for name in names], run_dir, **kwargs)


def test_metrics_jsonl_and_tensorboard_read_back(tmp_path):
    sinks = _open(tmp_path, "jsonl", "tensorboard")
    sinks.write_scalars(10, {"loss": 0.75, "rewards/margins": 1.5}, "train")
    sinks.write_scalars(20, {"loss": 0.5, "rewards/margins": float("nan")}, "train")
    sinks.write_scalars(20, {"accuracy": 0.875}, "eval")
    sinks.write_scalars(30, {}, "train")  # nothing to write: no line
    sinks.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 20]
    assert lines[0]["train/loss"] == 0.75 and lines[0]["train/rewards/margins"] == 1.5
    assert lines[1]["train/rewards/margins"] is None  # NaN written as null: strict JSON
    assert set(lines[2]) == {"step", "time", "eval/accuracy"}
    assert all(isinstance(line["time"], float) for line in lines)

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/rewards/margins", "eval/accuracy"}
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(10, 0.75), (20, 0.5)]
    assert [(e.step, e.value) for e in events.Scalars("eval/accuracy")] == [(20, 0.875)]


def test_tables_are_whole_files_and_events_are_lines(tmp_path):
    sinks = _open(tmp_path, "jsonl", "tensorboard")
    rows = [{"step": 3, "prompt": "Hi | there", "completion": "Hello", "reward": 0.5,
             "rewards": {"len": 1.0, "judge": None}, "advantage": float("inf"), "length": 2, "truncated": False}]
    sinks.write_table(3, "completions", rows)
    sinks.write_table(3, "completions", rows * 2)  # rewritten whole
    sinks.write_event(3, "checkpoint", path="/x/3")
    sinks.write_event(4, "error", message="boom")
    sinks.close()
    table = tmp_path / "completions" / "step_00000003.jsonl"
    read = [json.loads(line) for line in table.read_text().splitlines()]
    assert len(read) == 2 and read[0]["rewards"] == {"len": 1.0, "judge": None} and read[0]["advantage"] is None
    assert os.listdir(table.parent) == [table.name]  # no temporary file left behind
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["step"], e["kind"]) for e in events] == [(3, "checkpoint"), (4, "error")]
    assert events[0]["path"] == "/x/3" and events[1]["message"] == "boom" and isinstance(events[0]["time"], float)
    text = EventAccumulator(str(tmp_path / "tensorboard"))
    text.Reload()
    assert text.Tags()["tensors"] == ["completions/text_summary"]
    for bad in ("../x", "checkpoints", ".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="table name"):
            Sinks().write_table(1, bad, rows)


def test_a_reader_never_sees_half_a_table(tmp_path, monkeypatch):
    """The table is written to a temporary name and renamed: while it is being written, the
    final name holds the previous whole table (here: none) and never a partial one."""
    sink, seen = JsonlSink(tmp_path), []
    final = tmp_path / "completions" / "step_00000001.jsonl"
    real_replace = os.replace

    def replace_after_looking(source, target):
        seen.append((final.exists(), sum(1 for _ in open(source))))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_after_looking)
    sink.write_table(1, "completions", [{"i": i} for i in range(1000)])
    sink.close()
    assert seen == [(False, 1000)] and len(final.read_text().splitlines()) == 1000


def test_resumed_run_appends(tmp_path):
    for step in (1, 2):
        sinks = _open(tmp_path, "jsonl")
        sinks.write_scalars(step, {"loss": float(step)}, "train")
        sinks.write_event(step, "start")
        sinks.close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "tensorboard").exists()


def test_only_the_main_process_writes(tmp_path):
    sinks = _open(tmp_path / "run", "jsonl", "tensorboard", is_main_process=False)
    sinks.write_scalars(1, {"loss": 1.0}, "train")
    sinks.write_table(1, "completions", [{"a": 1}])
    sinks.write_event(1, "start")
    sinks.close()
    assert not (tmp_path / "run").exists()


def test_wandb_is_used_only_when_installed_and_asked(tmp_path, monkeypatch, capsys):
    calls = []

    class FakeRun:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or FakeRun()
    fake.Table = lambda columns, data: ("table", columns, data)
    monkeypatch.setitem(sys.modules, "wandb", fake)

    def run(log: dict):
        sinks = open_sinks(from_dict(LogConfig, log).resolved_sinks(), tmp_path, into=Sinks())
        sinks.write_scalars(3, {"loss": 2.0}, "train")
        sinks.write_table(3, "completions", [{"prompt": "p", "rewards": {"a": 1.0}}])
        sinks.close()

    run({"tensorboard": False, "wandb": {"project": "p"}})
    assert calls == [("init", {"project": "p", "dir": str(tmp_path)}), ("log", {"train/loss": 2.0}, 3),
                     ("log", {"completions": ("table", ["prompt", "rewards"], [["p", '{"a": 1.0}']])}, 3),
                     ("finish",)]
    calls.clear()
    run({"tensorboard": False})  # not asked for
    assert calls == []

    monkeypatch.setitem(sys.modules, "wandb", None)  # asked for, not installed: a warning, no crash
    run({"tensorboard": False, "wandb": {"project": "p"}})
    assert "wandb package is not installed" in capsys.readouterr().err


def test_log_sinks_config_defaults_and_errors():
    def sinks(**log):
        return [name for name, _ in from_dict(LogConfig, log).resolved_sinks()]

    assert sinks() == ["jsonl", "console", "tensorboard"]  # what every run wrote before log.sinks existed
    assert sinks(tensorboard=False) == ["jsonl", "console"]
    assert sinks(wandb={"project": "p"}) == ["jsonl", "console", "tensorboard", "wandb"]
    assert sinks(sinks=["jsonl", {"name": USER_SINK, "path": "x"}]) == ["jsonl", USER_SINK]
    for log, message in [
        ({"sinks": ["jsonl", "tensorbord"]}, "unknown sink 'tensorbord'.*Did you mean 'tensorboard'"),
        ({"sinks": ["tensorboard"], "tensorboard": False}, "log.tensorboard is false but log.sinks lists tensorboard"),
        ({"sinks": ["jsonl"], "wandb": {"project": "p"}}, "log.sinks does not list wandb"),
        ({"sinks": ["jsonl", "jsonl"]}, "lists a sink twice"),
        ({"sinks": [{"path": "x"}]}, "a mapping with a 'name'"),
        ({"sinks": ["tests.user_sinks_helper:Nope"]}, "has no attribute 'Nope'"),
        ({"every_steps": 0}, "log.every_steps must be >= 1"),
    ]:
        with pytest.raises((ValueError, ConfigError), match=message):
            from_dict(LogConfig, log)


def test_a_user_sink_gets_every_call_and_its_options(tmp_path):
    calls_file = tmp_path / "calls.jsonl"
    sinks = open_sinks([(USER_SINK, {"path": str(calls_file)})], tmp_path / "run")
    sinks.write_scalars(1, {"loss": 1.5}, "train")
    sinks.write_table(1, "completions", [{"completion": "x"}])
    sinks.write_event(1, "checkpoint", path="p")
    sinks.close()
    assert read_calls(calls_file) == [
        ["init", str(tmp_path / "run")], ["scalars", 1, {"loss": 1.5}, "train"],
        ["table", 1, "completions", [{"completion": "x"}]], ["event", 1, "checkpoint", {"path": "p"}], ["close"]]


def test_a_failing_sink_is_named_and_the_others_still_close(tmp_path):
    class Broken(BaseSink):
        def write_scalars(self, step, metrics, prefix):
            raise OSError("disk full")

        def close(self):
            raise OSError("still full")

    jsonl = JsonlSink(tmp_path)
    sinks = Sinks([Broken(), jsonl], ["broken", "jsonl"])
    with pytest.raises(SinkError, match="sink 'broken' failed in write_scalars: OSError: disk full"):
        sinks.write_scalars(1, {"loss": 1.0}, "train")
    with pytest.raises(SinkError, match="sink 'broken' failed in close"):
        sinks.close()
    assert jsonl._metrics is None  # closed anyway


def test_console_sink_drives_the_bar_and_prints_eval_and_tables():
    stream = io.StringIO()
    sink = ConsoleSink(stream=stream, min_interval_s=0)
    sink.write_event(0, "start", total_steps=4)
    sink.write_scalars(2, {"loss": 0.5, "tokens_per_s": 2000.0}, "train")
    sink.write_scalars(2, {"loss": 0.25, "accuracy": float("nan")}, "eval")
    sink.write_table(2, "completions", [{"prompt": "p" * 300}, {"prompt": "q"}, {"prompt": "r"}])
    sink.write_event(4, "finish")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("step 2/4 | loss 0.5000 | 2.0k tok/s")
    assert lines[1] == "eval at step 2: loss 0.25"
    assert lines[2] == "completions at step 2: 3 rows"
    assert len(lines[3]) == 2 + 160 and lines[3].endswith("...") and lines[4] == '  {"prompt": "q"}'
    assert len(lines) == 5


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_progress_bar_on_a_non_tty_prints_sparse_full_lines():
    stream, clock = io.StringIO(), FakeClock()
    bar = ProgressBar(2000, start_step=100, stream=stream, min_interval_s=30, clock=clock)
    assert not bar.is_tty
    clock.now += 41
    bar.update(120, loss=0.43123, tokens_per_s=1234.0)
    clock.now += 10
    bar.update(130, loss=0.4)  # within 30 s of the last line: not printed
    bar.message("checkpoint saved at step 130")
    clock.now += 25
    bar.update(140, loss=0.39, tokens_per_s=2.5e6)
    bar.close()
    lines = stream.getvalue().splitlines()
    # 20 steps in 41 s -> 1880 more steps take 3854 s.
    assert lines[0] == "step 120/2000 | loss 0.4312 | 1.2k tok/s | 00:41<1:04:14"
    assert lines[1] == "checkpoint saved at step 130"
    assert lines[2].startswith("step 140/2000 | loss 0.3900 | 2.5M tok/s | 01:16<")
    assert len(lines) == 3 and "\r" not in stream.getvalue()


def test_progress_bar_always_shows_the_last_step_and_unprinted_lines_on_close():
    stream, clock = io.StringIO(), FakeClock()
    bar = ProgressBar(10, stream=stream, clock=clock)
    bar.update(1)
    bar.update(2)  # throttled
    bar.close()  # ...but not lost
    bar = ProgressBar(10, stream=stream, clock=clock)
    bar.update(1)
    bar.update(10)  # the last step is always printed
    assert [line.split(" |")[0] for line in stream.getvalue().splitlines()] == ["step 1/10", "step 2/10",
                                                                                  "step 1/10", "step 10/10"]


def test_progress_bar_redraws_in_place_on_a_tty():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = ProgressBar(100, stream=stream, clock=FakeClock())
    bar.update(1, loss=1.0)
    bar.update(2, loss=0.5)
    bar.message("eval done")
    bar.close()
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    assert "\r\x1b[Keval done\nstep 2/100 | loss 0.5000" in text


def test_get_logger_prints_concise_lines(capsys):
    log = get_logger("test")
    log.info("checkpoint saved at step %d", 5)
    log.warning("careful")
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith(" checkpoint saved at step 5") and len(err[0].split(" ")[0]) == 8  # HH:MM:SS
    assert err[1].endswith(" WARNING careful")
    assert get_logger() is get_logger() and log.name == "jaxalign.test"


def test_the_trainer_publishes_to_the_configured_sinks(tmp_path, monkeypatch, capsys):
    from jaxalign.config import load_config
    from jaxalign.trainer import Trainer, train
    from tests.train_fixtures import tiny_run_config, write_config

    calls_file, run_dir = tmp_path / "calls.jsonl", tmp_path / "run"

    def config(max_steps: int):
        return load_config(write_config(tmp_path / "c.yaml", tiny_run_config(
            run_dir, algo="sft", max_steps=max_steps, eval_batches=1, export=False,
            data={"train": "builtin:sft", "eval": "builtin:sft#eval"},
            checkpoint={"every_steps": 1, "every_minutes": 0},
            log={"every_steps": 1, "sinks": ["jsonl", {"name": USER_SINK, "path": str(calls_file)}]})))

    train(config(2))
    calls = read_calls(calls_file)
    assert calls[0] == ["init", str(run_dir)] and calls[-1] == ["close"]
    assert calls[1] == ["event", 0, "start", {"total_steps": 2, "algo": "sft"}]
    kinds = [(c[0], c[1], c[2] if c[0] == "event" else c[3]) for c in calls[1:-1]]
    assert kinds == [("event", 0, "start"), ("scalars", 1, "train"), ("event", 1, "checkpoint"),
                     ("scalars", 2, "train"), ("event", 2, "checkpoint"), ("scalars", 2, "eval"),
                     ("event", 2, "eval"), ("event", 2, "finish")]
    assert {"loss", "learning_rate", "tokens_per_s"} <= set(calls[2][2])
    assert calls[3][3]["path"].endswith("checkpoints/1") and calls[7][3] == {"final": True}
    assert not (run_dir / "tensorboard").exists() and "step 2/2" not in capsys.readouterr().err  # no console

    # A resumed run that fails: start, resume, error (then the sinks still close).
    def boom(self, iterator, window):
        raise RuntimeError("boom")

    monkeypatch.setattr(Trainer, "_optimizer_step", boom)
    with pytest.raises(RuntimeError, match="boom"):
        train(config(3))
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [(e["kind"], e["step"]) for e in events[-3:]] == [("start", 2), ("resume", 2), ("error", 2)]
    assert events[-2]["from_step"] == 2 and events[-1]["message"] == "RuntimeError: boom"
    assert read_calls(calls_file)[-1] == ["close"]
