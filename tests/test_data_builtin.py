"""Built-in datasets and the shipped quickstart tokenizer."""

from __future__ import annotations

import json

import pytest

from jaxalign.data import builtin, builtin_templates, load_tokenizer


def test_preferences_are_varied_deterministic_and_split():
    train, held = builtin.rows("preferences", "train"), builtin.rows("preferences", "eval")
    assert 600 <= len(train) + len(held) <= 1000
    assert abs(len(held) / (len(train) + len(held)) - builtin.EVAL_FRACTION) < 0.01
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert len({r["prompt"] for r in train}) == len(train)
    categories = {r["category"] for r in train}
    assert categories == set(builtin_templates.HARMFUL) | set(builtin_templates.BENIGN)
    assert {r["category"] for r in held} <= categories and len({r["category"] for r in held}) > 10
    builtin._pairs.cache_clear()
    assert builtin.rows("preferences", "train") == train  # regenerated from scratch: identical
    for row in train:
        assert row["prompt"].startswith("\n\nHuman: ") and row["prompt"].endswith("\n\nAssistant:")
        assert row["chosen"].startswith(" ") and row["rejected"].startswith(" ") and row["chosen"] != row["rejected"]
        assert "{x}" not in row["chosen"] + row["rejected"] + row["prompt"]


def test_harmful_requests_prefer_declining_and_benign_prefer_helping():
    rows = builtin.rows("preferences", "train")
    harmful = [r for r in rows if r["category"] in builtin_templates.HARMFUL]
    benign = [r for r in rows if r["category"] in builtin_templates.BENIGN]
    assert len(harmful) > 250 and len(benign) > 250
    assert all(r["chosen"].strip().startswith(builtin_templates.DECLINE_OPENERS) for r in harmful)
    assert all(r["rejected"].strip().startswith(builtin_templates.COMPLY_OPENERS) for r in harmful)
    assert not any(r["chosen"].strip().startswith(builtin_templates.DECLINE_OPENERS) for r in benign)
    cheat = [r for r in harmful if r["category"] == "cheating"]
    assert any("help me cheat on my" in r["prompt"].lower() for r in cheat)


def test_derived_datasets_follow_the_pairs():
    pairs = builtin.rows("preferences", "eval")
    assert builtin.rows("sft", "eval") == [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]
    assert builtin.rows("prompts", "eval") == [{"prompt": p["prompt"]} for p in pairs]
    kto = builtin.rows("kto", "eval")
    assert len(kto) == 2 * len(pairs) and kto[0] == {"prompt": pairs[0]["prompt"], "completion": pairs[0]["chosen"], "label": True}
    assert kto[1]["label"] is False and kto[1]["completion"] == pairs[0]["rejected"]
    with pytest.raises(ValueError, match="unknown built-in dataset 'builtin:nope'"):
        builtin.rows("nope")


def test_shipped_tokenizer_matches_a_fresh_training_run(tmp_path):
    builtin.write_tokenizer(tmp_path)
    fresh = json.loads((tmp_path / "tokenizer.json").read_text())
    shipped = json.loads((builtin.TOKENIZER_DIR / "tokenizer.json").read_text())
    assert fresh["model"]["vocab"] == shipped["model"]["vocab"] and fresh["model"]["merges"] == shipped["model"]["merges"]
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == json.loads(
        (builtin.TOKENIZER_DIR / "tokenizer_config.json").read_text())


def test_builtin_tokenizer_round_trips_the_data_compactly():
    tok = load_tokenizer("builtin")
    rows = builtin.rows("preferences", "train")[:50]
    for row in rows:
        text = row["prompt"] + row["chosen"]
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    chars = sum(len(r["prompt"] + r["chosen"]) for r in rows)
    tokens = sum(len(tok(r["prompt"] + r["chosen"], add_special_tokens=False)["input_ids"]) for r in rows)
    assert chars / tokens > 3.0  # a BPE that learned the vocabulary, not bytes
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "\n\nHuman: hi\n\nAssistant:"
