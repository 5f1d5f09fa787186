"""Constitutional AI data: the constitution file, prompt assembly, the loop's rows, resumable outputs,
and bad input through the CLI (a stub sampler stands in for the model where the text is what matters)."""

import json

import pytest

from jaxalign import cli
from jaxalign.constitutional import (ConstitutionalConfig, ConstitutionalRun, ConstitutionError, load_constitution,
                                     pick_principle)
from jaxalign.constitutional.constitution import parse_constitution
from jaxalign.constitutional.loop import FILES, PromptRow
from jaxalign.constitutional.outputs import OutputsMismatch, ResumableOutputs
from jaxalign.constitutional.sampling import Sample
from jaxalign.constitutional.summary import Totals
from jaxalign.constitutional.transcript import (EXAMPLE_SEPARATOR, Round, critique_prompt, cut_at_stop_strings,
                                                few_shot_prefix, revision_prompt)

SMALL = {
    "principles": [
        {"name": "harm", "critique_request": "Is it harmful?", "revision_request": "Make it harmless."},
        {"name": "help", "critique_request": "Is it helpful?", "revision_request": "Make it helpful.",
         "judge_question": "Which reply helps more?"},
    ],
    "examples": [{"prompt": "\n\nHuman: Q\n\nAssistant:", "reply": " bad", "principle": "harm", "critique": " It is bad.",
                  "revision": " good"}],
}


def small() -> "Constitution":  # noqa: F821
    return parse_constitution(SMALL, "small.yaml")


def test_default_constitution_has_10_to_16_principles_each_with_a_judge_question():
    constitution = load_constitution()
    assert 10 <= len(constitution.principles) <= 16
    assert all(p.critique_request and p.revision_request and p.judge_question for p in constitution.principles)
    assert constitution.examples and all(e.principle in {p.name for p in constitution.principles}
                                         for e in constitution.examples)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t["principles"][1].pop("revision_request"), "small.yaml: principles[1]: missing field 'revision_request'"),
    (lambda t: t["principles"][0].update(critque="x"), "small.yaml: principles[0]: unknown key 'critque'"),
    (lambda t: t.update(principals=[]), "small.yaml: unknown key 'principals'"),
    (lambda t: t.pop("principles"), "small.yaml: missing field 'principles'"),
    (lambda t: t["examples"][0].update(principle="nope"), "small.yaml: examples[0]: principle 'nope' is not one of"),
    (lambda t: t["principles"][1].update(name="harm"), "small.yaml: principle names must be unique; repeated: harm"),
])
def test_bad_constitution_names_the_file_entry_and_field(edit, message):
    tree = json.loads(json.dumps(SMALL))
    edit(tree)
    with pytest.raises(ConstitutionError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        parse_constitution(tree, "small.yaml")


def test_prompt_assembly_is_the_documented_transcript():
    c = small()
    harm, help_ = c.principles
    assert few_shot_prefix(c) == ("\n\nHuman: Q\n\nAssistant: bad\n\nCritique request: Is it harmful?\n\nCritique: It is"
                                  " bad.\n\nRevision request: Make it harmless.\n\nRevision: good" + EXAMPLE_SEPARATOR)
    earlier = [Round("harm", " c1", " r1")]
    assert critique_prompt("P:", " first", earlier, help_, c) == (
        "P: first\n\nCritique request: Is it harmful?\n\nCritique: c1\n\nRevision request: Make it harmless."
        "\n\nRevision: r1\n\nCritique request: Is it helpful?\n\nCritique:")
    assert revision_prompt("P:", " first", [], harm, " c2", c) == (
        "P: first\n\nCritique request: Is it harmful?\n\nCritique: c2\n\nRevision request: Make it harmless.\n\nRevision:")
    assert cut_at_stop_strings(" ok\n\nHuman: more\n\nCritique: x", ["\n\nCritique:", "\n\nHuman:"]) == (" ok", True)
    assert cut_at_stop_strings(" ok", ["\n\nHuman:"]) == (" ok", False)


def test_principle_pick_is_seeded_and_cycle_takes_each_in_turn():
    c = load_constitution()
    picks = [pick_principle(c, "random", 3, i, r).name for i in range(40) for r in range(2)]
    assert picks == [pick_principle(c, "random", 3, i, r).name for i in range(40) for r in range(2)]
    assert len(set(picks)) >= 8  # 80 draws over 12 principles
    assert picks != [pick_principle(c, "random", 4, i, r).name for i in range(40) for r in range(2)]
    assert [pick_principle(c, "cycle", 0, 5, r).name for r in range(3)] == [p.name for p in c.principles[5:8]]


class EchoSampler:
    """Characters as tokens; replies made from the call's stage and the row's text, so the rows are checkable."""

    def __init__(self, empty_revision_for: str = "never"):
        self.calls, self.empty_for = [], empty_revision_for

    def encode(self, text, first):
        return ([1] if first else []) + [ord(ch) for ch in text]

    def sample(self, rows, max_new_tokens, rng, prefix_ids=None):
        texts = ["".join(chr(t) for t in row if t > 1) for row in rows]
        self.calls.append((texts, prefix_ids))
        out = []
        for text in texts:
            if text.endswith("Critique:"):
                out.append(Sample(f" crit{text.count('Critique:')}", 3, "stop"))
            elif text.endswith("Revision:"):
                empty = self.empty_for in text
                out.append(Sample("" if empty else f" rev{text.count('Revision:')}", 3, "stop"))
            else:
                out.append(Sample(" first", 2, "length"))
        return out


def make_run(tmp_path, sampler, prompts=5, **settings):
    cfg = ConstitutionalConfig(model="m", prompts="p", out_dir=str(tmp_path / "out"), batch_size=2,
                               principle_order="cycle", **settings)
    rows = [PromptRow(i, f"\n\nHuman: q{i}\n\nAssistant:", {"category": f"c{i}"}) for i in range(prompts)]
    return ConstitutionalRun(cfg, small(), sampler, rows)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loop_writes_trl_rows_with_rounds_prefix_and_columns(tmp_path):
    sampler = EchoSampler(empty_revision_for="q3")
    totals = make_run(tmp_path, sampler, rounds=2).run(str(tmp_path / "out"), {"v": 1})
    out = tmp_path / "out"
    sft, pairs, trace = (read(out / name) for name in FILES)
    assert [r["prompt"] for r in sft] == [f"\n\nHuman: q{i}\n\nAssistant:" for i in range(5)]
    assert sft[0] == {"prompt": "\n\nHuman: q0\n\nAssistant:", "completion": " rev2", "category": "c0"}
    # q3's revisions came back empty: the reply is kept, so no pair for it
    assert sft[3]["completion"] == " first" and len(pairs) == 4 and "q3" not in json.dumps(pairs)
    assert pairs[0] == {"prompt": sft[0]["prompt"], "chosen": " rev2", "rejected": " first", "category": "c0"}
    assert [s["principle"] for s in trace[1]["rounds"]] == ["help", "harm"]  # cycle: (index + round) mod 2
    assert trace[3]["rounds"][0]["revision_finish"] == "empty" and trace[3]["changed"] is False
    # every critique/revision call continues the few-shot prefix, encoded once with BOS
    prefix = [1] + [ord(ch) for ch in few_shot_prefix(small())]
    assert all(p == prefix for _, p in sampler.calls[1:3]) and sampler.calls[0][1] is None
    round2 = next(texts for texts, _ in sampler.calls if texts[0].count("Critique request:") == 2)
    assert round2[0] == ("\n\nHuman: q0\n\nAssistant: first\n\nCritique request: Is it harmful?\n\nCritique: crit1"
                         "\n\nRevision request: Make it harmless.\n\nRevision: rev1\n\nCritique request: Is it helpful?"
                         "\n\nCritique:")
    assert (totals.prompts, totals.changed, totals.rounds_run, totals.empty_revisions) == (5, 4, 10, 2)
    assert json.loads((out / "progress.json").read_text())["prompts_done"] == 5


def test_transcript_limit_stops_revising_and_is_counted(tmp_path):
    prefix = 1 + len(few_shot_prefix(small()))
    totals = make_run(tmp_path, EchoSampler(), rounds=2, max_transcript_tokens=prefix + 150, max_critique_tokens=8,
                      max_revision_tokens=8).run(str(tmp_path / "out"), {})
    trace = read(tmp_path / "out" / "trace.jsonl")
    assert all(len(row["rounds"]) == 1 and row["stopped"] == "max_transcript_tokens" for row in trace)
    assert totals.stopped_transcript == 5
    with pytest.raises(ValueError, match=f"max_transcript_tokens 50 leaves no room for a transcript: the "
                                         f"constitution's few-shot examples take {prefix} tokens"):
        make_run(tmp_path, EchoSampler(), max_transcript_tokens=50)


def test_resume_after_a_kill_mid_batch_has_no_duplicate_and_no_lost_row(tmp_path):
    whole = tmp_path / "whole"
    make_run(whole, EchoSampler()).run(str(whole / "out"), {"v": 1})
    part = tmp_path / "part"
    make_run(part, EchoSampler(), prompts=2).run(str(part / "out"), {"v": 1})  # first batch committed
    for name in FILES:  # a killed second batch: half-written rows after the recorded sizes
        with open(part / "out" / name, "a") as handle:
            handle.write('{"prompt": "half-written"}\n{"prom')
    run = make_run(part, EchoSampler())
    totals = run.run(str(part / "out"), {"v": 1})
    assert totals.resumed_at == 2 and totals.redone_rows == 3  # one complete stray line per file
    for name in FILES:
        assert (part / "out" / name).read_text() == (whole / "out" / name).read_text()
    assert totals.prompts == 5  # running totals continue over the resume


def test_changed_config_refuses_to_mix_outputs_and_says_what_changed(tmp_path):
    ResumableOutputs(tmp_path, FILES, {"settings": {"rounds": 1, "temperature": 1.0}, "model": "abc"})
    with pytest.raises(OutputsMismatch, match=r"different config; refusing to mix them. Changed: settings.rounds "
                                              r"\(1 -> 2\); settings.temperature \(1.0 -> 0.7\)"):
        ResumableOutputs(tmp_path, FILES, {"settings": {"rounds": 2, "temperature": 0.7}, "model": "abc"})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "sft.jsonl").write_text("{}\n")
    with pytest.raises(OutputsMismatch, match="no run.json"):
        ResumableOutputs(tmp_path / "other", FILES, {})


def test_totals_survive_progress_json():
    totals = Totals(prompts=3, changed=2, rounds_run=3, first_words=9, final_words=12)
    again = Totals.from_dict(json.loads(json.dumps(totals.to_dict())))
    assert again.metrics() == totals.metrics() and again.metrics()["changed_share"] == pytest.approx(2 / 3)


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case, expected", [
    ("empty_prompts", "jaxalign: error: data: {tmp}/prompts.jsonl is empty: it holds no rows"),
    ("bad_constitution", "jaxalign: error: {tmp}/c.yaml: principles[0]: missing field 'revision_request'"),
    ("unknown_key", "jaxalign: config error: {tmp}/cfg.yaml: unknown config key 'roundz'. Did you mean 'rounds'?"),
    ("bad_stop_token", "jaxalign: error: stop_tokens: 'Critique request' is"),
])
def test_bad_input_through_the_cli_is_one_clear_line(tmp_path, capsys, case, expected):
    from jaxalign.data import load_tokenizer
    from jaxalign.models import ModelConfig, init_model, save_pretrained

    tokenizer = load_tokenizer("builtin")
    model_dir = tmp_path / "model"
    if case == "bad_stop_token":
        cfg = ModelConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                          num_kv_heads=1, max_position_embeddings=64)
        save_pretrained(init_model(cfg, seed=0), model_dir)
    tokenizer.save_pretrained(model_dir)
    prompts = write(tmp_path / "prompts.jsonl", "" if case == "empty_prompts" else '{"prompt": "hi"}\n')
    config = {"model": str(model_dir), "prompts": prompts, "out_dir": str(tmp_path / "out")}
    if case == "bad_constitution":
        config["constitution"] = write(tmp_path / "c.yaml", "principles:\n  - {name: a, critique_request: b}\n")
    if case == "unknown_key":
        config["roundz"] = 2
    if case == "bad_stop_token":
        config["stop_tokens"] = ["Critique request"]
    path = write(tmp_path / "cfg.yaml", json.dumps(config))
    code = cli.main(["constitutional", path])
    err = capsys.readouterr().err.strip()
    assert code in (1, 2) and len(err.splitlines()) == 1
    assert err.startswith(expected.format(tmp=tmp_path)), err


def test_a_larger_max_prompts_extends_the_outputs_after_a_short_last_batch(tmp_path):
    sampler = EchoSampler()
    make_run(tmp_path, sampler, prompts=7, max_prompts=3).run(str(tmp_path / "out"), {"v": 1})
    totals = make_run(tmp_path, sampler, prompts=7, max_prompts=7).run(str(tmp_path / "out"), {"v": 1})
    trace = read(tmp_path / "out" / "trace.jsonl")
    assert [r["index"] for r in trace] == list(range(7)) and totals.prompts == 7 and totals.resumed_at == 3
    first_reply_batches = [len(texts) for texts, prefix in sampler.calls if prefix is None]
    assert first_reply_batches == [2, 1, 1, 2, 1]  # batch_size 2: [0,1] [2] | [3] [4,5] [6]


def test_without_few_shot_every_prompt_is_the_bare_transcript(tmp_path):
    sampler = EchoSampler()
    make_run(tmp_path, sampler, prompts=2, few_shot=False).run(str(tmp_path / "out"), {"v": 1})
    assert all(prefix is None for _, prefix in sampler.calls)
    critique_texts = next(texts for texts, _ in sampler.calls if texts[0].endswith("Critique:"))
    assert critique_texts[0] == "\n\nHuman: q0\n\nAssistant: first\n\nCritique request: Is it harmful?\n\nCritique:"
