"""The dashboard's reading of run dirs and what it lays out from them (no server, no browser)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tsdownsample", reason="the dashboard extra is not installed: pip install -e '.[dashboard]'")

from dashboard_fixtures import append_lines, write_completions, write_reward_model_eval, write_run  # noqa: E402

from jaxalign.dashboard import names  # noqa: E402
from jaxalign.dashboard.downsample import bucket_means, downsample, ema  # noqa: E402
from jaxalign.dashboard.figures import RunData, chart_sections  # noqa: E402
from jaxalign.dashboard.metrics_table import MetricsTable  # noqa: E402
from jaxalign.dashboard.payload import build_payload, completion_rows  # noqa: E402
from jaxalign.dashboard.runs import RunDirError, RunSet  # noqa: E402


def _lines(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


def test_partial_last_line_waits_and_is_read_once_complete(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_lines({"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 0.9}) + '{"step": 3, "train/lo')
    table = MetricsTable(path)
    table.refresh()
    assert list(table.frame().index) == [1, 2] and table.pending_bytes > 0 and table.skipped_lines == 0
    with open(path, "a") as out:
        out.write('ss": 0.8}\n')
    assert table.refresh()
    assert table.frame()["train/loss"].to_dict() == {1: 1.0, 2: 0.9, 3: 0.8} and table.pending_bytes == 0


def test_killed_mid_write_then_resumed_skips_the_broken_line_and_counts_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    # Killed mid-line at step 3; the resumed run (from step 2's checkpoint) appends after the fragment.
    path.write_text(_lines({"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 0.9}) + '{"step": 3, "tr'
                    + _lines({"step": 3, "train/loss": 0.7}, {"step": 4, "train/loss": 0.6}))
    table = MetricsTable(path)
    table.refresh()
    assert table.frame()["train/loss"].to_dict() == {1: 1.0, 2: 0.9, 4: 0.6}
    assert table.skipped_lines == 1


def test_resume_replaces_the_abandoned_steps_and_train_eval_lines_merge(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = [{"step": s, "train/loss": 1.0} for s in range(1, 11)] + [{"step": 10, "eval/loss": 5.0}]
    resumed = [{"step": s, "train/loss": 2.0} for s in range(6, 9)] + [{"step": 8, "eval/loss": 3.0}]
    path.write_text(_lines(*first))
    table = MetricsTable(path)
    table.refresh()
    assert table.frame().loc[10, "eval/loss"] == 5.0
    append_lines(path, resumed)  # appended later, read incrementally like a live run
    table.refresh()
    frame = table.frame()
    assert list(frame.index) == list(range(1, 9))  # 9 and 10 belonged to the abandoned stretch
    assert frame["train/loss"].tolist() == [1.0] * 5 + [2.0] * 3
    assert frame.loc[8, "eval/loss"] == 3.0 and np.isnan(frame.loc[7, "eval/loss"])


def test_null_values_and_a_replaced_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(_lines({"step": 1, "train/loss": None, "note": "text"}, {"step": 2, "train/loss": 0.5}, {"x": 1}))
    table = MetricsTable(path)
    table.refresh()
    assert np.isnan(table.frame().loc[1, "train/loss"]) and "note" not in table.frame().columns
    assert table.skipped_lines == 1  # the line without a step
    path.write_text(_lines({"step": 1, "train/loss": 0.25}))  # a new run in the same dir: shorter file
    assert table.refresh()
    assert table.frame()["train/loss"].to_dict() == {1: 0.25}


def test_aliases_first_name_wins_and_globs_label_each_source():
    assert names.resolve("reward", ["objective/scores", "reward"]) == [("objective/scores", "reward")]
    assert names.resolve("kl", ["kl", "loss"]) == [("kl", "kl")]
    assert names.resolve("reward source", ["rewards/format/mean", "rewards/lexicon/mean", "rewards/chosen"]) == [
        ("rewards/format/mean", "format"), ("rewards/lexicon/mean", "lexicon")]
    assert names.resolve("not in the table", ["not in the table"]) == [("not in the table", "not in the table")]
    assert names.split_name("eval/objective/kl") == ("eval", "objective/kl")
    assert names.split_name("objective/kl") == ("train", "objective/kl")


def _figures(sections):
    return {f["id"]: f for s in sections for f in s["figures"]}


def _run_data(tmp_path, lines, events=()):
    (tmp_path / "m.jsonl").write_text(_lines(*lines))
    table = MetricsTable(tmp_path / "m.jsonl")
    table.refresh()
    return RunData(0, "run", "#000", table.frame(), list(events))


def test_grpo_names_draw_the_same_overview_and_unknown_metrics_still_show(tmp_path):
    lines = [{"step": s, "train/reward": 0.1 * s, "train/kl": 0.01 * s, "train/rewards/acc/mean": 0.1,
              "train/completions/mean_length": 30.0, "train/my_new_metric": 1.0} for s in range(1, 30)]
    figures = _figures(chart_sections([_run_data(tmp_path, lines)]))
    assert {"reward_kl", "trajectory", "reward_sources", "length", "other:my_new_metric"} <= set(figures)
    reward_kl = figures["reward_kl"]["figure"]
    assert [t["yaxis"] for t in reward_kl["data"]] == ["y", "y2"]  # reward above KL, one x axis
    assert reward_kl["layout"]["hoversubplots"] == "axis"  # one cursor across both panels
    assert "accuracy" not in figures and "other:reward" not in figures  # nothing drawn twice or empty


def test_gold_reward_adds_a_panel_and_a_gold_trajectory(tmp_path):
    run = write_run(tmp_path / "run", range(1, 61))
    figures = _figures(chart_sections([RunData(0, "run", "#000", _table(run).frame(), [])]))
    assert [t["yaxis"] for t in figures["reward_kl"]["figure"]["data"]] == ["y", "y2", "y3"]
    gold_path = [t for t in figures["trajectory"]["figure"]["data"] if t["xaxis"] == "x2" and t["mode"] != "markers"]
    # The fixture's gold reward rises then falls against KL: the trajectory shows it.
    assert np.argmax(gold_path[0]["y"]) not in (0, len(gold_path[0]["y"]) - 1)


def _table(run):
    table = MetricsTable(run / "metrics.jsonl")
    table.refresh()
    return table


def test_events_draw_checkpoint_and_eval_markers_and_resume_lines(tmp_path):
    lines = [{"step": s, "train/objective/scores": 0.1, "train/objective/kl": 0.1, "train/loss": 1.0} for s in range(1, 50)]
    events = [{"step": 20, "kind": "checkpoint"}, {"step": 20, "kind": "resume", "from_step": 20},
              {"step": 30, "kind": "eval"}, {"step": 40, "kind": "error", "message": "NaN loss"}]
    figures = _figures(chart_sections([_run_data(tmp_path, lines, events)]))
    overview = figures["reward_kl"]["figure"]
    track = {t["name"]: t["x"] for t in overview["data"] if t.get("yaxis") == "y9"}
    assert track == {"checkpoint": [20], "eval": [30]}
    assert overview["layout"]["xaxis"]["anchor"] == "y9"  # the step labels sit under the event strip
    lines_at = {(s["x0"], s["line"]["dash"]) for s in overview["layout"]["shapes"]}
    assert lines_at == {(20, "dash"), (40, "solid")}  # resume and error, full height
    assert {s["x0"] for s in figures["loss"]["figure"]["layout"]["shapes"]} == {20, 40}


def test_downsampling_keeps_extremes_and_ends():
    x = np.arange(100_000)
    y = np.sin(x / 5000.0)
    y[54_321] = 50.0  # a loss spike must survive
    dx, dy = downsample(x, y, 1000)
    assert len(dx) <= 1000 and dx[0] == 0 and dx[-1] == 99_999 and dy.max() == 50.0 and np.all(np.diff(dx) > 0)
    steps, values = bucket_means([np.arange(10.0), np.arange(10.0) * 2], 5)
    assert steps.tolist() == [0.5, 2.5, 4.5, 6.5, 8.5] and values.tolist() == [1, 5, 9, 13, 17]


def test_smoothing_is_tensorboards_debiased_average():
    values = np.array([1.0, np.nan, 3.0, 2.0])
    w = 0.5
    # by hand: last = 0.5, 1.75, 1.875 after 1, 2 and 3 finite values; debiased by 1 - 0.5**n
    assert ema(values, w)[[0, 2, 3]].tolist() == pytest.approx([1.0, 1.75 / 0.75, 1.875 / 0.875])
    assert np.isnan(ema(values, w)[1])
    constant = np.full(7, 1e-3)
    assert np.array_equal(ema(constant, 0.9), constant)


def test_completion_rows_latest_step_search_all_steps_and_chat_prompts(tmp_path):
    run_dir = write_run(tmp_path / "run", range(1, 31))
    write_completions(run_dir, 31, [{"prompt": [{"role": "user", "content": "Hi BEES"}], "completion": "buzz",
                                     "reward": 1.0}])
    runset = RunSet([run_dir])
    run = runset.runs[0]
    latest = completion_rows(run, None)
    assert latest["step"] == 31 and latest["rows"][0]["prompt"] == "user: Hi BEES" and latest["rows"][0]["step"] == 31
    assert latest["steps"] == [10, 20, 30, 31]
    found = completion_rows(run, -1, "GREAT great")
    assert found["total"] == 3 and {r["step"] for r in found["rows"]} == {10, 20, 30}  # row 0 of each step
    assert completion_rows(run, 20, "bees")["total"] == 4
    assert completion_rows(run, 999)["rows"] == []


def test_bad_completion_and_eval_files_are_reported_not_fatal(tmp_path):
    run_dir = write_run(tmp_path / "run", range(1, 11))
    (run_dir / "completions" / "step_00000010.jsonl").write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    write_reward_model_eval(run_dir)
    (run_dir / "eval" / "broken.json").write_text("{")
    payload = build_payload(RunSet([run_dir]))
    assert completion_rows(RunSet([run_dir]).runs[0], 10)["skipped"] == 1
    table = {row["name"]: row for row in payload["evals"]["table"]}
    assert table["hh_test"]["metrics"]["accuracy"] == 0.71 and "not readable" in table["broken"]["problem"]
    ids = [f["id"] for f in payload["evals"]["figures"]]
    assert ids == ["reliability", "dist:0:hh_test"]


def test_runs_under_a_parent_folder_are_found_and_new_ones_appear(tmp_path):
    write_run(tmp_path / "sweep" / "kl0.01", range(1, 5))
    write_run(tmp_path / "sweep" / "kl0.1", range(1, 5))
    runset = RunSet([tmp_path])
    assert [r.name for r in runset.runs] == ["sweep/kl0.01", "sweep/kl0.1"]
    version = runset.version
    write_run(tmp_path / "sweep" / "kl1", range(1, 5))
    assert runset.refresh() > version and [r.name for r in runset.runs][-1] == "sweep/kl1"
    assert runset.refresh() == runset.version  # nothing new: same version


def test_missing_and_empty_run_dirs_are_one_clear_error(tmp_path):
    with pytest.raises(RunDirError, match=r"run dir not found: .*nope"):
        RunSet([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="no run under .*empty: a run dir holds metrics.jsonl"):
        RunSet([tmp_path / "empty"])
