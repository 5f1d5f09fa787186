"""Bad input at the command line: one clear ``jaxalign: ...`` line, the right exit code, nothing lost.

Exit codes: 2 = the config or command line is wrong (caught before anything
runs, or the checkpoint does not fit the config), 1 = the run met bad input
or a fault, 130 = interrupted. docs/reliability.md lists every case with its test.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

from jaxalign import cli
from jaxalign.checkpoint import Checkpointer
from tests.train_fixtures import finished_checkpoints, read_metrics, tiny_run_config, write_config


def _main(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, expected_code: int, *fragments: str) -> str:
    """One ``jaxalign:`` line holding every fragment, no traceback; returns that line."""
    lines = [line for line in err.splitlines() if line.startswith("jaxalign:")]
    assert code == expected_code and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert all(fragment in lines[0] for fragment in fragments), (fragments, lines[0])
    return lines[0]


@pytest.fixture
def config(tmp_path):
    def make(**sections):
        return str(write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "run", **sections)))
    return make


def _jsonl(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


GOOD_ROW = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}


# ---------------------------------------------------------------- config and command line (exit 2)


def test_log_every_steps_zero(config, capsys):
    assert_one_line(*_main(capsys, "train", config(), "--set", "log.every_steps=0"), 2,
                    "log.every_steps must be >= 1")


@pytest.mark.parametrize("text, expected", [
    ("run_dir: !!python/object/apply:os.system ['echo hi']\n",
     "line 1, column 10: could not determine a constructor for the tag"),
    ("algo: rm\nmodel:\n\tpath: x\n", "line 3, column 1: while scanning for the next token found character '\\t'"),
])
def test_yaml_errors_name_line_and_column(tmp_path, capsys, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert_one_line(*_main(capsys, "train", str(path)), 2, f"{path}: not valid YAML: {expected}")


def test_non_finite_numbers_are_rejected(config, capsys):
    assert_one_line(*_main(capsys, "train", config(), "--set", "optim.lr=.nan"), 2,
                    "config key 'optim.lr' must be a finite number, got nan")
    assert_one_line(*_main(capsys, "train", config(), "--set", "loss.beta=.inf"), 2, "'loss.beta' must be a finite")


@pytest.mark.parametrize("override, suggestion", [
    ("optim.learning_rat=1e-5", "optim.lr"),  # a TRL name, misspelt: not warmup_ratio
    ("lr=1e-5", "optim.lr"),  # the right name in the wrong section
    ("data.batchsize=4", "data.batch_size"),
])
def test_unknown_keys_suggest_the_nearest_full_key(config, capsys, override, suggestion):
    key = override.split("=")[0]
    assert_one_line(*_main(capsys, "train", config(), "--set", override), 2,
                    f"unknown config key '{key}'. Did you mean '{suggestion}'?")


def test_plan_runs_no_user_code_unless_asked(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "side_effect_loss.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "def loss(inputs, cfg):\n    return inputs.policy_chosen_logps\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "side_effect_loss", raising=False)
    path = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "run", algo="dpo",
                                                              loss={"name": "side_effect_loss:loss"}))
    code, err = _main(capsys, "plan", str(path), "--devices", "8")
    assert code == 0 and not marker.exists()
    assert "loss 'side_effect_loss:loss' was not imported (plan runs no user code)" in err
    assert _main(capsys, "plan", str(path), "--devices", "8", "--import-losses")[0] == 0 and marker.exists()


# ---------------------------------------------------------------- data files (exit 1, the file named)


def test_a_malformed_json_line_names_line_and_column(tmp_path, config, capsys):
    train = _jsonl(tmp_path / "bad.jsonl", [GOOD_ROW, '{"prompt": oops, "chosen": " y", "rejected": " n"}',
                                            GOOD_ROW, '{"prompt": "Q", "chosen": '])
    assert_one_line(*_main(capsys, "train", config(), "--set", f"data.train={train}", "--set", "data.eval=null"),
                    1, f"{train}:2: undecodable JSON line: Expecting value (column 12)")
    rows = [GOOD_ROW] * 30 + ['{"prompt": "Q", "chosen": ']
    train = _jsonl(tmp_path / "cut.jsonl", rows)
    assert_one_line(*_main(capsys, "train", config(), "--set", f"data.train={train}", "--set", "data.eval=null"),
                    1, f"{train}:31: undecodable JSON line: Expecting value (at the end of the line)")


@pytest.mark.parametrize("name, content, fragment", [
    ("pairs.csv", "prompt,chosen,rejected\nQ,yes,no\n", "CSV/TSV files are not read directly"),
    ("pairs.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "no row could be read as a JSON object"),
    ("empty.jsonl", "", "is empty: it holds no rows"),
    ("blank.jsonl", "\n\n  \n", "is empty: it holds no rows"),
    ("columns.jsonl", '{"question": "?", "answer": "!"}\n', "cannot tell the format from columns ['answer', 'question']"),
])
def test_unreadable_data_files_are_named(tmp_path, config, capsys, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_line(*_main(capsys, "train", config(), "--set", f"data.train={path}", "--set", "data.eval=null"),
                    1, str(path), fragment)


def test_a_bad_first_row_does_not_decide_the_format(tmp_path, config, capsys):
    from jaxalign.data import detect_format
    from jaxalign.data.sources import read_rows

    # The first row lacks "rejected": alone it would read as prompt-only data (which cannot train a reward model).
    rows = [{"prompt": "Q?", "chosen": " yes"}] + [GOOD_ROW] * 20
    train = _jsonl(tmp_path / "pairs.jsonl", rows)
    assert detect_format(read_rows(train)) == "preference"
    assert_one_line(*_main(capsys, "train", config(), "--set", f"data.train={train}", "--set", "data.eval=null"),
                    1, f"{train}:1: field 'rejected': missing")
    only_prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Q?"}] * 3)
    assert_one_line(*_main(capsys, "train", config(), "--set", f"data.train={only_prompts}", "--set", "data.eval=null"),
                    1, f"{only_prompts}: format 'prompt_only' cannot feed reward training")


def test_skipping_more_than_the_allowed_fraction_fails_naming_the_file(tmp_path, config, capsys):
    rows = [GOOD_ROW] * 16 + [{"prompt": "Q", "chosen": 5, "rejected": " n"}] * 4
    train = _jsonl(tmp_path / "mostly.jsonl", rows)
    assert_one_line(*_main(capsys, "train", config(), "--set", f"data.train={train}", "--set", "data.eval=null",
                           "--set", "data.on_bad_row=skip"), 1,
                    f"skipped 4 of 20 rows of {train} as bad (on_bad_row: skip; wrong_type 4)",
                    f"{train}:17: field 'chosen': expected a string", "over data.max_skipped_fraction 0.1")


def test_skipped_rows_and_truncation_are_counted_per_split_and_reported(tmp_path, config, capsys):
    long_prompt = {"prompt": "word " * 200, "chosen": " yes", "rejected": " no"}
    rows = [GOOD_ROW, long_prompt] * 10 + ['{"prompt": broken'] + [{"prompt": "Q", "chosen": " y"}]
    train = _jsonl(tmp_path / "train.jsonl", rows * 2)
    evaluation = _jsonl(tmp_path / "eval.jsonl", [long_prompt] * 8)
    code, err = _main(capsys, "train", config(max_steps=2, export=False), "--set", f"data.train={train}",
                      "--set", f"data.eval={evaluation}", "--set", "data.on_bad_row=skip")
    assert code == 0, err
    assert f"data (train): skipped 4 of 44 rows of {train} as bad (on_bad_row: skip; bad_json 2, missing_field 2)" in err
    assert f"e.g. {train}:21: undecodable JSON line" in err and f"{train}:22: field 'rejected': missing" in err
    assert "data (train): " in err and "example(s) truncated to fit" in err and "data (eval): 8 example(s) truncated" in err
    train_metrics = read_metrics(tmp_path / "run")
    eval_metrics = read_metrics(tmp_path / "run", prefix="eval/")
    assert train_metrics[2]["train/data/skipped_rows"] == 4
    assert train_metrics[1]["train/data/truncated"] + train_metrics[2]["train/data/truncated"] > 0
    assert eval_metrics[2]["eval/data/truncated"] == 8 and eval_metrics[2]["eval/data/dropped"] == 0


# ---------------------------------------------------------------- losses, models, signals


def test_a_custom_loss_reading_a_missing_column_names_it(config, capsys):
    line = assert_one_line(*_main(capsys, "train", config(algo="dpo", loss={"name": "tests.missing_column_loss_helper:reads_missing_column"})),
                           1, "loss 'test_reads_a_missing_column'", "batch column 'annotator_weight'",
                           "which the batch does not have; it has: ")
    assert "input_ids" in line and "example_mask" in line


def test_unknown_or_unreachable_hub_ids_and_missing_folders(config, capsys, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network here: fail fast
    prompts = _jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}])
    assert_one_line(*_main(capsys, "generate", "--model", "/no/such/dir", "--prompts", prompts), 1,
                    "no such folder: /no/such/dir")
    assert_one_line(*_main(capsys, "generate", "--model", "some-org/some-model", "--prompts", prompts), 1,
                    "'some-org/some-model' is not a local folder, and the Hugging Face hub could not provide it",
                    "huggingface-cli download some-org/some-model --local-dir DIR")
    path = write_config(tmp_path / "hub.yaml", {**tiny_run_config(tmp_path / "run"),
                                                "model": {"path": "some-org/some-model"}})
    assert_one_line(*_main(capsys, "train", str(path)), 1, "'some-org/some-model' is not a local folder")
    path = write_config(tmp_path / "hub.yaml", {**tiny_run_config(tmp_path / "run"),
                                                "model": {"path": "some-org/some-model", "tokenizer": "builtin"}})
    assert_one_line(*_main(capsys, "train", str(path)), 1, "model 'some-org/some-model' is not a local folder, and "
                    "jaxalign loads models from local folders only")


def test_a_second_ctrl_c_during_the_save_finishes_the_save_then_exits(tmp_path, config, capsys, monkeypatch):
    real_save = Checkpointer.save

    def interrupted_save(self, step, *args, **kwargs):
        if step == 2:  # Ctrl-C, and Ctrl-C again while the checkpoint is being written
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", interrupted_save)
    code, err = _main(capsys, "train", config(max_steps=6, export=False, checkpoint={"every_steps": 2}))
    assert_one_line(code, err, 130, "interrupted (the last checkpoint written is complete)")
    assert "Ctrl-C again: saving the checkpoint first, then exiting" in err
    assert finished_checkpoints(tmp_path / "run") == [2]


def test_the_reliability_table_has_a_test_for_every_row():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    rows = [line for line in (root / "docs" / "reliability.md").read_text().splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 25
    for row in rows:
        named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)", row)
        assert named, row
        for path, name in named:
            assert re.search(rf"^def {name}\(", (root / path).read_text(), flags=re.M), (path, name)
