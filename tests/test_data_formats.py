"""Rows -> canonical text examples: every format, implicit prompts, bad rows."""

from __future__ import annotations

import gzip
import json

import pytest

from data_fixtures import HH_PATH, builtin_tokenizer, hh_rows, needs_shared_data, write_jsonl
from jaxalign.data import DataError, detect_format, implicit_prompt
from jaxalign.data.chat import ChatRenderer
from jaxalign.data.errors import Counter
from jaxalign.data.formats import format_rows
from jaxalign.data.sources import RawRow, carve_eval, read_rows


def examples_of(values, fmt, kind="preference", on_bad_row="raise"):
    stats = Counter()
    rows = [RawRow(f"rows.jsonl:{i + 1}", value) for i, value in enumerate(values)]
    made = format_rows(rows, fmt, kind, lambda: ChatRenderer(builtin_tokenizer()), on_bad_row, stats)
    return made, stats.snapshot()


def texts(example):
    return example.prompt, ["".join(text for text, _ in pieces) for pieces in example.completions]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.mark.parametrize(
    "columns, expected",
    [
        ({"prompt", "chosen", "rejected"}, "preference"),
        ({"chosen", "rejected"}, "implicit_preference"),
        ({"prompt", "responses", "scores"}, "ratings"),
        ({"prompt", "ranking"}, "ranking"),
        ({"prompt", "completion", "label"}, "unpaired"),
        ({"prompt", "completion"}, "prompt_completion"),
        ({"messages"}, "messages"),
        ({"text", "id"}, "text"),
        ({"prompt"}, "prompt_only"),
    ],
)
def test_detect_format_from_columns(columns, expected):
    assert detect_format([RawRow("f:1", {name: "x" for name in columns})]) == expected


def test_detect_format_unknown_columns_names_the_row():
    with pytest.raises(DataError, match=r"f:3: cannot tell the format from columns \['question'\]"):
        detect_format([RawRow("f:3", {"question": "?"})])


def test_explicit_preference():
    (example,), _ = examples_of([{"prompt": "Q:", "chosen": " yes", "rejected": " no"}], "preference")
    assert texts(example) == ("Q:", [" yes", " no"])
    assert example.where == "rows.jsonl:1" and example.margin is None and not example.chat


def test_implicit_preference_rule():
    # Shared reply beginnings stay in the completions: the prompt ends at the last speaker tag.
    chosen = "\n\nHuman: hi\n\nAssistant: I think so, yes."
    rejected = "\n\nHuman: hi\n\nAssistant: I think not."
    assert implicit_prompt(chosen, rejected) == "\n\nHuman: hi\n\nAssistant:"
    # Without speaker tags: back off to a word boundary, the completion keeps its leading space.
    assert implicit_prompt("Tell me a joke. Why did the hen", "Tell me a joke. What now") == "Tell me a joke."
    assert implicit_prompt("Tell me a joke. Why", "Tell me a joke. No") == "Tell me a joke."
    assert implicit_prompt("Tell me a joke.\nWhy", "Tell me a joke. Why") == "Tell me a joke."


def test_implicit_preference_example_and_equal_pair():
    made, stats = examples_of(
        [
            {"chosen": "\n\nHuman: hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: hi\n\nAssistant: Go away."},
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: b"},
        ],
        "implicit_preference",
        on_bad_row="skip",
    )
    assert [texts(e) for e in made] == [("\n\nHuman: hi\n\nAssistant:", [" Hello!", " Go away."])]
    assert stats["skipped/chosen_equals_rejected"] == 1 and stats["rows_kept"] == 1


def test_conversational_preference_uses_the_chat_template():
    row = {"prompt": [user("hi")], "chosen": [assistant("hello")], "rejected": [assistant("go away")]}
    (example,), _ = examples_of([row], "preference")
    assert example.chat
    assert texts(example) == ("\n\nHuman: hi\n\nAssistant:", [" hello<|endoftext|>", " go away<|endoftext|>"])
    # Implicit conversational: the prompt is the common message prefix.
    implicit = {"chosen": [user("hi"), assistant("hello")], "rejected": [user("hi"), assistant("go away")]}
    (same,), _ = examples_of([implicit], "implicit_preference")
    assert texts(same) == texts(example)


def test_ratings_give_all_higher_lower_pairs_with_margins():
    row = {"prompt": "Q", "responses": [" a", " b", " c"], "scores": [1, 3, 2.5]}
    made, _ = examples_of([row], "ratings")
    pairs = {tuple(texts(e)[1]): e.margin for e in made}
    assert pairs == {(" b", " c"): 0.5, (" b", " a"): 2.0, (" c", " a"): 1.5}


def test_ranking_gives_all_pairs_best_first():
    made, _ = examples_of([{"prompt": "Q", "ranking": [" a", " b", " c"]}], "ranking")
    assert [tuple(texts(e)[1]) for e in made] == [(" a", " b"), (" a", " c"), (" b", " c")]


def test_unpaired_and_pairs_converted_to_unpaired():
    (example,), _ = examples_of([{"prompt": "Q", "completion": " a", "label": False}], "unpaired", kind="unpaired")
    assert texts(example) == ("Q", [" a"]) and example.label is False
    made, _ = examples_of([{"prompt": "Q", "chosen": " y", "rejected": " n"}], "preference", kind="unpaired")
    assert [(texts(e)[1], e.label) for e in made] == [([" y"], True), ([" n"], False)]


def test_sft_formats():
    (pc,), _ = examples_of([{"prompt": "Q", "completion": " A"}], "prompt_completion", kind="sft")
    assert texts(pc) == ("Q", [" A"])
    (plain,), _ = examples_of([{"text": "just text"}], "text", kind="sft")
    assert texts(plain) == ("", ["just text"])
    (from_pair,), _ = examples_of([{"prompt": "Q", "chosen": " y", "rejected": " n"}], "preference", kind="sft")
    assert texts(from_pair) == ("Q", [" y"])


def test_messages_mark_only_assistant_replies_for_the_loss():
    conversation = [user("hi"), assistant("hello"), user("more"), assistant("sure")]
    (example,), _ = examples_of([{"messages": conversation}], "messages", kind="sft")
    assert example.prompt == "\n\nHuman: hi\n\nAssistant:"
    assert example.completions == (
        ((" hello<|endoftext|>", True), ("\n\nHuman: more\n\nAssistant:", False), (" sure<|endoftext|>", True)),
    )


def test_prompt_only_from_several_formats():
    rows = {
        "prompt_only": {"prompt": "Q"},
        "preference": {"prompt": "Q", "chosen": " y", "rejected": " n"},
        "implicit_preference": {"chosen": "\n\nHuman: Q\n\nAssistant: y", "rejected": "\n\nHuman: Q\n\nAssistant: n"},
        "messages": {"messages": [user("Q"), assistant("y"), user("again"), assistant("z")]},
    }
    prompts = {fmt: examples_of([row], fmt, kind="prompt")[0][0].prompt for fmt, row in rows.items()}
    assert prompts["prompt_only"] == prompts["preference"] == "Q"
    assert prompts["implicit_preference"] == "\n\nHuman: Q\n\nAssistant:"
    assert prompts["messages"] == "\n\nHuman: Q\n\nAssistant: y<|endoftext|>\n\nHuman: again\n\nAssistant:"


def test_format_kind_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="format 'text' cannot feed preference training"):
        examples_of([{"text": "x"}], "text")


@pytest.mark.parametrize(
    "row, fmt, message",
    [
        ({"prompt": "Q", "chosen": " y"}, "preference", r"rows.jsonl:1: field 'rejected': missing"),
        ({"prompt": "Q", "chosen": 3, "rejected": " n"}, "preference", r"field 'chosen': expected a string, got int"),
        ({"prompt": "Q", "chosen": "  ", "rejected": " n"}, "preference", r"field 'chosen': empty response"),
        ({"prompt": "Q", "chosen": " y", "rejected": " y"}, "preference", r"field 'rejected': chosen equals rejected"),
        ({"prompt": "Q", "completion": " a", "label": "yes"}, "unpaired", r"field 'label': expected a bool"),
        ({"prompt": "Q", "responses": [" a", " b"], "scores": [1]}, "ratings", r"field 'scores': expected a list of 2"),
        ({"messages": [{"role": "user"}]}, "messages", r"field 'messages': message 0 is not"),
    ],
)
def test_bad_rows_name_row_and_field(row, fmt, message):
    kind = {"unpaired": "unpaired", "messages": "sft"}.get(fmt, "preference")
    with pytest.raises(DataError, match=message):
        examples_of([row], fmt, kind=kind)


def test_skip_mode_counts_each_reason(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "Q", "chosen": " y", "rejected": " n"},
        '{"prompt": "Q", "chosen": " y", ',  # truncated line
        {"prompt": "Q", "chosen": " y"},
        {"prompt": "Q", "chosen": "", "rejected": " n"},
        {"prompt": "Q", "chosen": [1], "rejected": " n"},
        {"prompt": "Q", "chosen": " same", "rejected": " same"},
    ])
    rows = read_rows(str(path))
    with pytest.raises(DataError, match=rf"{path}:2: undecodable JSON line"):
        format_rows(rows, "preference", "preference", lambda: None, "raise", Counter())
    stats = Counter()
    made = format_rows(rows, "preference", "preference", lambda: ChatRenderer(builtin_tokenizer()), "skip", stats)
    assert len(made) == 1
    assert stats.snapshot() == {
        "rows_read": 6, "rows_kept": 1, "rows_skipped": 5, "examples": 1, "skipped/bad_json": 1,
        "skipped/missing_field": 1, "skipped/empty_response": 1, "skipped/wrong_type": 1,
        "skipped/chosen_equals_rejected": 1,
    }


def test_json_array_rows_keep_line_numbers(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"prompt": "Q", "chosen": " y", "rejected": " n"},\n\n  {"prompt": "Q", "chosen": " y"}\n]\n')
    rows = read_rows(str(path))
    assert [row.where for row in rows] == [f"{path}:2", f"{path}:4"]
    with pytest.raises(DataError, match=rf"{path}:4: field 'rejected': missing"):
        format_rows(rows, "preference", "preference", lambda: None, "raise", Counter())


def test_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"prompt": ["Q", "R"], "completion": [" a", " b"]}), path)
    rows = read_rows(str(path))
    assert [(row.where, row.value) for row in rows][1] == (f"{path}:row 1", {"prompt": "R", "completion": " b"})


def test_carve_eval_is_fixed_and_disjoint():
    rows = [RawRow(f"f:{i}", {"i": i}) for i in range(100)]
    train, held = carve_eval(rows, 0.1)
    again_train, again_held = carve_eval(rows, 0.1)
    assert len(held) == 10 and len(train) == 90 and held == again_held and train == again_train
    assert {r.where for r in train} | {r.where for r in held} == {r.where for r in rows}


@needs_shared_data
def test_hh_rlhf_implicit_prompts_end_with_assistant_tag():
    rows = read_rows(str(HH_PATH))
    stats = Counter()
    made = format_rows(rows, detect_format(rows), "preference", lambda: None, "skip", stats)
    counts = stats.snapshot()
    assert counts["rows_read"] == len(hh_rows()) == 2354
    assert counts["skipped/chosen_equals_rejected"] == 2
    assert counts["skipped/empty_response"] == 4  # rows whose rejected reply is empty after "Assistant: "
    assert all(example.prompt.endswith("\n\nAssistant:") for example in made)
    assert all(pieces[0][0].startswith(" ") for example in made for pieces in example.completions)
    # The 9 rows whose text before the last "\n\nAssistant:" differs (a reply that itself contains the tag).
    quirky = [r for r in hh_rows() if r["chosen"] != r["rejected"]
              and r["chosen"][: r["chosen"].rfind("\n\nAssistant:")] != r["rejected"][: r["rejected"].rfind("\n\nAssistant:")]]
    assert len(quirky) == 9
    for row in quirky:
        assert implicit_prompt(row["chosen"], row["rejected"]).endswith("\n\nAssistant:")
    with pytest.raises(DataError, match=rf"{HH_PATH}:121: field 'rejected': empty response"):
        format_rows(rows, "implicit_preference", "preference", lambda: None, "raise", Counter())
    with pytest.raises(DataError, match=rf"{HH_PATH}:722: field 'rejected': chosen equals rejected"):
        format_rows(rows[721:722], "implicit_preference", "preference", lambda: None, "raise", Counter())


def test_dataset_folder_goes_through_hf_datasets(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": "Q", "completion": " a"}, {"prompt": "R", "completion": " b"}])
    write_jsonl(folder / "test.jsonl", [{"prompt": "T", "completion": " c"}])
    train = read_rows(str(folder), "train")
    assert [(r.where, r.value["prompt"]) for r in train] == [(f"{folder}#train:row 0", "Q"), (f"{folder}#train:row 1", "R")]
    assert [r.value["prompt"] for r in read_rows(str(folder), "eval")] == ["T"]  # eval defaults to "test"
    assert [r.value["prompt"] for r in read_rows(f"{folder}#train", "eval")] == ["Q", "R"]


def test_a_null_inside_responses_is_a_wrong_type_not_a_missing_column():
    with pytest.raises(DataError, match=r"field 'responses': expected a string, got NoneType"):
        examples_of([{"prompt": "Q", "responses": [" a", None], "scores": [2, 1]}], "ratings")
