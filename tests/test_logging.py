"""MetricsLogger (JSONL, TensorBoard, W&B), ProgressBar, and the text logger."""

import io
import json
import sys
import types

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jaxalign.metrics_log import MetricsLogger, ProgressBar, get_logger


def test_metrics_jsonl_and_tensorboard_read_back(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        logger.log(10, {"loss": 0.75, "rewards/margins": 1.5})
        logger.log(20, {"loss": 0.5, "rewards/margins": float("nan")})
        logger.log(20, {"accuracy": 0.875}, prefix="eval")
        logger.log(30, {})  # nothing to write: no line
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


def test_resumed_run_appends(tmp_path):
    for step in (1, 2):
        with MetricsLogger(tmp_path, tensorboard=False) as logger:
            logger.log(step, {"loss": float(step)})
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "tensorboard").exists()


def test_only_the_main_process_writes(tmp_path):
    logger = MetricsLogger(tmp_path / "run", is_main_process=False)
    logger.log(1, {"loss": 1.0})
    logger.close()
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
    monkeypatch.setitem(sys.modules, "wandb", fake)
    with MetricsLogger(tmp_path, tensorboard=False, wandb={"project": "p"}) as logger:
        logger.log(3, {"loss": 2.0})
    assert calls == [("init", {"project": "p", "dir": str(tmp_path)}), ("log", {"train/loss": 2.0}, 3), ("finish",)]

    calls.clear()
    with MetricsLogger(tmp_path, tensorboard=False) as logger:  # not asked for
        logger.log(4, {"loss": 1.0})
    assert calls == []

    monkeypatch.setitem(sys.modules, "wandb", None)  # asked for, not installed: a warning, no crash
    with MetricsLogger(tmp_path, tensorboard=False, wandb={"project": "p"}) as logger:
        logger.log(5, {"loss": 1.0})
    assert "wandb package is not installed" in capsys.readouterr().err


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
