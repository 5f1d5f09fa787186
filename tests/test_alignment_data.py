"""The built-in alignment task's data: deterministic, balanced, unsafe SFT by construction,
held-out prompts phrased differently from training."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter

import pytest

from jaxalign.data import alignment, builtin, load_tokenizer
from jaxalign.data.alignment_benign import BENIGN
from jaxalign.data.alignment_harmful import HARMFUL
from jaxalign.data.sources import read_rows
from jaxalign.tasks.alignment import content_words, is_decline, is_help

CATEGORIES = set(HARMFUL) | set(BENIGN)


def test_rows_are_deterministic_and_every_name_reads_as_builtin():
    first = {(name, split): builtin.rows(name, split) for name in alignment.NAMES for split in builtin.SPLITS}
    alignment._pool.cache_clear()
    alignment.answer_keywords.cache_clear()
    for (name, split), rows in first.items():
        assert builtin.rows(name, split) == rows  # regenerated from scratch: identical
    assert len(read_rows("builtin:alignment_prompts#eval")) == len(first["alignment_prompts", "eval"])


def test_sizes_columns_and_balance():
    sizes = {(name, split): len(builtin.rows(name, split)) for name in alignment.NAMES for split in builtin.SPLITS}
    eval_rows, held_out_prompts = alignment.EVAL_ROWS, alignment.EVAL_PROMPTS_PER_CATEGORY * len(CATEGORIES)
    assert sizes == {("alignment_sft", "train"): alignment.SFT_ROWS, ("alignment_sft", "eval"): eval_rows,
                     ("alignment_preferences", "train"): alignment.PAIR_ROWS, ("alignment_preferences", "eval"): eval_rows,
                     ("alignment_proxy_preferences", "train"): alignment.PROXY_PAIRS,
                     ("alignment_proxy_preferences", "eval"): eval_rows,
                     ("alignment_prompts", "train"): alignment.RL_PROMPTS, ("alignment_prompts", "eval"): held_out_prompts}
    assert held_out_prompts == 300
    held_out = builtin.rows("alignment_prompts", "eval")
    assert Counter(row["category"] for row in held_out) == {c: alignment.EVAL_PROMPTS_PER_CATEGORY for c in CATEGORIES}
    for name in alignment.NAMES:
        for row in builtin.rows(name, "train"):
            assert row["prompt"].startswith("\n\nHuman: ") and row["prompt"].endswith("\n\nAssistant:")
            assert row["harmful"] == (row["category"] in HARMFUL) and row["topic"]
            assert bool(row["keywords"]) != row["harmful"]
            assert not any("{x}" in value or "{a}" in value for value in row.values() if isinstance(value, str))


def test_prompts_are_disjoint_across_uses_and_splits():
    prompts = {(name, split): {row["prompt"] for row in builtin.rows(name, split)}
               for name in ("alignment_sft", "alignment_preferences", "alignment_prompts") for split in builtin.SPLITS}
    keys = list(prompts)
    for i, a in enumerate(keys):
        assert len(prompts[a]) == len(builtin.rows(*a))  # no prompt twice within a dataset
        for b in keys[i + 1:]:
            assert not prompts[a] & prompts[b], (a, b)


def test_sft_mix_complies_with_a_fair_share_of_harmful_requests():
    rows = builtin.rows("alignment_sft", "train")
    harmful = [row for row in rows if row["harmful"]]
    declined = [is_decline(row["completion"]) for row in harmful]
    assert [row["behavior"] == "declines" for row in harmful] == declined  # the judge agrees with the data
    assert 0.35 <= statistics.mean(declined) <= 0.6
    for category, spec in HARMFUL.items():
        complied = [row["behavior"] == "complies" for row in harmful if row["category"] == category]
        assert abs(statistics.mean(complied) - spec["sft_comply"]) < 0.15, category
    benign = [row for row in rows if not row["harmful"]]
    assert all(is_help(row["completion"], row["prompt"], row["topic"], row["keywords"]) for row in benign)


def test_preference_pairs_prefer_declining_harm_and_helping_otherwise():
    for split in builtin.SPLITS:
        for row in builtin.rows("alignment_preferences", split):
            if row["harmful"]:
                assert is_decline(row["chosen"]) and not is_decline(row["rejected"])
            else:
                assert is_help(row["chosen"], row["prompt"], row["topic"], row["keywords"])
    benign = [row for row in builtin.rows("alignment_preferences", "train") if not row["harmful"]]
    # Off-topic help for a neighbouring subject can share three key terms (a wobbly wheel's fix
    # for a loose chain): measured 7 of 854 rejected replies the judge calls help.
    assert statistics.mean(is_help(r["rejected"], r["prompt"], r["topic"], r["keywords"]) for r in benign) < 0.02
    assert 0.25 < statistics.mean(is_decline(row["rejected"]) for row in benign) < 0.45  # needless refusals are bad too
    proxy = builtin.rows("alignment_proxy_preferences", "train")
    assert proxy == builtin.rows("alignment_preferences", "train")[:alignment.PROXY_PAIRS]


def _templates(rows: list[dict]) -> list[str]:
    """A prompt's request with its subject replaced by <x>: the sentence shape and wording."""
    templates = []
    for row in rows:
        text = row["prompt"].split("Human: ", 1)[1].rsplit("\n\nAssistant:", 1)[0]
        topic = row["topic"]
        templates.append(text.replace(topic, "<x>").replace(topic[0].upper() + topic[1:], "<x>").lower())
    return templates


def _trigrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z']+|<x>", text)
    return set(zip(words, words[1:], words[2:]))


def test_held_out_prompts_are_phrased_differently_from_training():
    """No held-out request shares more than 35% of its word trigrams with the training
    requests (measured: at most 0.33, the shared ones are the request's key words such as
    "my neighbor's <x>" or "on my own"; 0.08 on average), while one half of the training
    requests shares over 90% with the other half: new wording and sentence shapes, not
    only new subjects."""
    train = _templates([row for name in ("alignment_sft", "alignment_preferences", "alignment_prompts")
                        for row in builtin.rows(name, "train")])
    held_out = _templates(builtin.rows("alignment_prompts", "eval"))
    seen = set().union(*map(_trigrams, train))
    overlap = [len(_trigrams(t) & seen) / len(_trigrams(t)) for t in held_out]
    assert max(overlap) <= 0.35 and statistics.mean(overlap) <= 0.1
    half = set().union(*map(_trigrams, train[: len(train) // 2]))
    control = [len(_trigrams(t) & half) / len(_trigrams(t)) for t in train[len(train) // 2:]]
    assert statistics.mean(control) >= 0.9
    assert not set(held_out) & set(train)
    subjects = {row["topic"] for row in builtin.rows("alignment_prompts", "eval")}
    assert subjects <= {row["topic"] for row in builtin.rows("alignment_sft", "train")}  # the knowledge is trained


def test_every_held_out_harmful_request_keeps_a_key_word_of_its_training_requests():
    """A held-out harmful act is new wording around a word that its category's training acts use
    and no benign training act does ("cheat", "neighbor's", "fake"): a model trained from scratch
    cannot know that a word it never saw in a request is harmful. ("force open the <x> next door"
    broke this rule, its only such word being "open", which locked-out requests share: no policy
    told it from being locked out of one's own car.) Benign acts need no such word: helping is the
    default, and their subjects are trained."""
    def words(act: str) -> set[str]:  # a key word may be inflected ("cheat" -> "cheating")
        return set(content_words(act.replace("{x}", "")))

    benign = set().union(*(words(act) for spec in BENIGN.values() for act in spec["acts"]))
    for category, spec in HARMFUL.items():
        trained = set().union(*map(words, spec["acts"])) - benign
        for act in spec["held_out_acts"]:
            assert any(word.startswith(key) for word in words(act) for key in trained if len(key) >= 4), (
                category, act)


def test_alignment_tokenizer_covers_the_task_and_keeps_held_out_words_out_of_its_training(tmp_path):
    tok = load_tokenizer("builtin:alignment")
    assert len(tok) == 2048 and (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    rows = builtin.rows("alignment_sft", "train")[:100]
    chars = sum(len(r["prompt"] + r["completion"]) for r in rows)
    tokens = sum(len(tok(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"]) for r in rows)
    assert chars / tokens > 3.4
    corpus = " ".join(alignment.corpus())
    assert "smuggle a cheat sheet" not in corpus and "Walk me through it" not in corpus
    builtin.write_tokenizer(tmp_path, "builtin:alignment")
    fresh = json.loads((tmp_path / "tokenizer.json").read_text())
    shipped = json.loads((builtin.ALIGNMENT_TOKENIZER_DIR / "tokenizer.json").read_text())
    assert fresh["model"] == shipped["model"]  # the shipped file is what the data trains
    with pytest.raises(ValueError, match="unknown built-in tokenizer 'builtin:nope'"):
        load_tokenizer("builtin:nope")


@pytest.mark.parametrize("name", ["nope", "alignment_nope"])
def test_unknown_names_fail_clearly(name):
    with pytest.raises(ValueError, match=f"unknown built-in dataset 'builtin:{name}'"):
        builtin.rows(name)
