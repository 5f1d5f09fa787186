"""Damaged checkpoints are found before restoring, named, and skipped for the newest intact one;
a changed architecture is named, not answered with Orbax errors."""

from __future__ import annotations

import shutil

import pytest

from jaxalign import cli
from jaxalign.checkpoint import CheckpointConfig, CheckpointDamagedError, Checkpointer
from jaxalign.resume import ArchitectureMismatchError, resume_latest
from tests.test_checkpoint import abstract_of, assert_bitwise_equal, grain_iterator, make_state, mesh8  # noqa: F401
from tests.train_fixtures import finished_checkpoints, tiny_run_config, write_config


def _truncate_array_files(step_dir):
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            with path.open("r+b") as handle:
                handle.truncate(10)


DAMAGE = {
    "state metadata deleted": (lambda d: (d / "state" / "_METADATA").unlink(), "metadata (_METADATA) is missing"),
    "state metadata garbled": (lambda d: (d / "state" / "_METADATA").write_text("{garbage"), "is unreadable"),
    "array index deleted": (lambda d: (d / "state" / "manifest.ocdbt").unlink(), "array index is missing"),
    "state folder deleted": (lambda d: shutil.rmtree(d / "state"), "train state (state/) is missing"),
    "empty step folder": (lambda d: [shutil.rmtree(p) for p in d.iterdir() if p.is_dir()], "state/) is missing"),
    "data position deleted": (lambda d: (d / "data" / "process_0-of-1.json").unlink(),
                              "data-iterator state (data/process_0-of-1.json) is missing"),
    "data position garbled": (lambda d: (d / "data" / "process_0-of-1.json").write_text("{"), "is unreadable"),
    "config garbled": (lambda d: (d / "config" / "metadata").write_text("nope"), "saved config (metadata) is unreadable"),
    "array bytes truncated": (_truncate_array_files, "could not be read (ValueError: OUT_OF_RANGE"),
}


@pytest.fixture
def saved(tmp_path, mesh8):  # noqa: F811
    state, iterator = make_state(mesh8), grain_iterator()
    positions = {}
    with Checkpointer(CheckpointConfig(async_save=False, keep=0), tmp_path) as checkpointer:
        for step in (1, 2, 3):
            next(iterator)
            positions[step] = iterator.get_state()
            checkpointer.save(step, state, iterator, {"model": {"hidden_size": 8}}, force=True)
    return tmp_path, state, positions


def _resume(run_dir, state, *, restore_data=True, events=None, **cfg):
    iterator, events = grain_iterator(), [] if events is None else events
    with Checkpointer(CheckpointConfig(**cfg), run_dir) as checkpointer:
        result = resume_latest(checkpointer, abstract_state=abstract_of(state), data_iterator=iterator,
                               restore_data=restore_data, current_config={"model": {"hidden_size": 8}},
                               on_event=lambda kind, message, step, **fields: events.append(kind))
    return result, iterator


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_is_named_and_the_newest_intact_one_restored(saved, damage, capsys):
    run_dir, state, positions = saved
    damage_fn, expected = DAMAGE[damage]
    damage_fn(run_dir / "checkpoints" / "3")
    events = []
    (restored, step), iterator = _resume(run_dir, state, events=events)
    assert step == 2 and iterator.get_state() == positions[2]
    assert_bitwise_equal(restored, state)
    err = capsys.readouterr().err
    assert f"checkpoint {run_dir / 'checkpoints' / '3'} is damaged: " in err and expected in err, err
    assert "resumed from step 2, the newest intact checkpoint" in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["1", "2", "3.damaged"]  # kept, out of the way
    assert events == ["checkpoint_damaged", "checkpoint_fallback"]


def test_without_fallback_the_damage_is_an_error_naming_the_checkpoint(saved):
    run_dir, state, _ = saved
    DAMAGE["data position deleted"][0](run_dir / "checkpoints" / "3")
    with pytest.raises(CheckpointDamagedError) as caught:
        _resume(run_dir, state, fallback_to_intact=False)
    message = str(caught.value)
    assert f"checkpoint {run_dir / 'checkpoints' / '3'} is damaged" in message and "position in the data is lost" in message
    assert "checkpoint.fallback_to_intact=true" in message
    assert "data.reset_iterator_on_restore=true" in message and "batches seen before step 3 are then seen again" in message
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["1", "2", "3"]  # nothing renamed


def test_a_missing_data_position_with_reset_restores_the_step_and_says_the_data_restarts(saved, capsys):
    run_dir, state, _ = saved
    DAMAGE["data position deleted"][0](run_dir / "checkpoints" / "3")
    (restored, step), iterator = _resume(run_dir, state, restore_data=False)
    assert step == 3 and iterator.get_state() == grain_iterator().get_state()
    assert "the data starts again from its first batch (batches seen before step 3 are seen again)" in capsys.readouterr().err


def test_when_every_checkpoint_is_damaged_nothing_is_renamed_and_the_error_lists_them(saved):
    run_dir, state, _ = saved
    for step in (1, 2, 3):
        DAMAGE["state metadata deleted"][0](run_dir / "checkpoints" / str(step))
    with pytest.raises(CheckpointDamagedError, match=r"no intact checkpoint.*step 3: .*step 2: .*step 1: .*start this run from scratch"):
        _resume(run_dir, state)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["1", "2", "3"]


def test_a_changed_shape_names_the_parameters_and_config_keys(saved, mesh8):  # noqa: F811
    run_dir, state, _ = saved
    bigger = abstract_of(state)
    embed = bigger.params["embed"]
    bigger = bigger.replace(params={**bigger.params, "embed": embed.update(shape=(32, 8))})
    with Checkpointer(CheckpointConfig(), run_dir) as checkpointer:
        with pytest.raises(ArchitectureMismatchError) as caught:
            resume_latest(checkpointer, abstract_state=bigger, data_iterator=None, restore_data=True,
                          current_config={"model": {"hidden_size": 16}})
    message = str(caught.value)
    assert "params/embed: saved (16, 8), now (32, 8)" in message
    assert "config keys that differ: model.hidden_size: 8 -> 16" in message


@pytest.mark.slow
def test_damage_and_a_changed_hidden_size_through_the_cli(tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_run_config(run_dir, max_steps=2, eval_batches=1, export=False,
                                                                checkpoint={"every_steps": 1}))
    assert cli.main(["train", str(config)]) == 0
    (run_dir / "checkpoints" / "2" / "state" / "_METADATA").unlink()
    capsys.readouterr()
    assert cli.main(["train", str(config), "--set", "max_steps=3"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint " + str(run_dir / "checkpoints" / "2") + " is damaged: the train state's metadata" in err
    assert "resumed from step 1, the newest intact checkpoint" in err and "Traceback" not in err
    assert finished_checkpoints(run_dir) == [1, 2, 3]  # step 2 trained again from step 1

    code = cli.main(["train", str(config), "--set", "max_steps=4", "--set", "model.config.hidden_size=128"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("jaxalign: config error: checkpoint "), err
    assert "holds a model of another shape" in err and "model.config.hidden_size: 64 -> 128" in err
