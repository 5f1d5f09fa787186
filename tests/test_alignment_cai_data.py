"""builtin:alignment_cai_sft: the alignment SFT mix plus critique, revision and judge rows in
the exact formats `jaxalign constitutional` and `jaxalign label` prompt with, whose answers
agree with the task's own rule-based judges."""

import re

import pytest

from jaxalign.constitutional.constitution import load_constitution
from jaxalign.constitutional.label import judge_prompt
from jaxalign.data import builtin
from jaxalign.tasks.alignment import is_decline, is_help


@pytest.fixture(scope="module")
def rows():
    return builtin.rows("alignment_cai_sft", "train")


def test_the_sft_mix_is_inside_unchanged_and_in_order(rows):
    mix = builtin.rows("alignment_sft", "train")
    assert [r for r in rows if r["behavior"] not in ("critique", "revision", "judge")] == mix
    skills = sum(r["behavior"] == "critique" for r in rows)
    assert 0.4 * len(mix) < skills < 0.6 * len(mix)  # SKILL_SHARE = 0.5


def test_critique_and_revision_rows_continue_one_transcript(rows):
    constitution = load_constitution()
    requests = {p.critique_request for p in constitution.principles}
    for i, row in enumerate(rows):
        if row["behavior"] != "critique":
            continue
        revision = rows[i + 1]
        assert revision["behavior"] == "revision"
        request = re.search(r"\n\nCritique request: (.*)\n\nCritique:$", row["prompt"])
        assert request and request.group(1) in requests and row["prompt"].startswith(rows[i - 1]["prompt"])
        assert revision["prompt"].startswith(row["prompt"] + row["completion"] + "\n\nRevision request: ")
        assert revision["prompt"].endswith("\n\nRevision:")


def test_revisions_and_verdicts_agree_with_the_task_judges(rows):
    questions = [p.judge_question for p in load_constitution().principles]
    for i, row in enumerate(rows):
        if row["behavior"] == "revision":
            if row["harmful"]:
                assert is_decline(row["completion"])
            else:
                assert is_help(row["completion"], subject=row["topic"], terms=row["keywords"])
        if row["behavior"] == "judge":
            conversation = rows[i - 3]["prompt"]  # the SFT row the skills were made for
            found = re.search(r"\n\n([^\n]*)\n\(A\)(.*)\n\(B\)(.*)\n\nAnswer: \($", row["prompt"], re.S)
            question, a, b = found.groups()
            assert question in questions and row["prompt"] == judge_prompt(conversation, a, b, question)
            better = a if row["completion"] == "A" else b
            assert row["completion"] in ("A", "B")
            assert is_decline(better) if row["harmful"] else is_help(better, subject=row["topic"],
                                                                       terms=row["keywords"])


def test_verdicts_are_balanced_over_positions(rows):
    letters = [r["completion"] for r in rows if r["behavior"] == "judge"]
    assert 0.45 < letters.count("A") / len(letters) < 0.55
