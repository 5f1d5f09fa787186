"""Feedback data: row columns reaching batches, rated replies, rankings packed K replies to a
prompt (layout, attention, tile pairs), critiques, annotator agreement and weights."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from data_fixtures import builtin_tokenizer
from jaxalign.batch import attention_mask
from jaxalign.data import DataConfig, DataError, TokenizedExample, build_pipeline, pack_examples, unpack
from jaxalign.data.annotators import agreement_table, apply_reliability, collect_votes
from jaxalign.data.example import TextExample, one_piece
from test_tiled_attention import brute_force_visible_tiles


def jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def pipeline(path, kind, batch_size=4, **options):
    cfg = DataConfig(train=path, batch_size=batch_size, max_length=64, pad_to_multiple=16, shuffle=False, **options)
    return build_pipeline(cfg, builtin_tokenizer(), split="train", kind=kind)


def first_batch(path, kind, **options):
    return next(pipeline(path, kind, **options).iterator())


def test_weight_and_strength_columns_reach_the_batch(tmp_path):
    rows = [{"prompt": f"Q{i}?", "chosen": " yes", "rejected": " no", "w": 0.5 * i, "p": 0.25 * i} for i in range(4)]
    batch = first_batch(jsonl(tmp_path / "d.jsonl", rows), "reward", weight_column="w", strength_column="p")
    real = batch["example_mask"] > 0
    assert sorted(batch["weight"][real]) == [0.0, 0.5, 1.0, 1.5]
    assert sorted(batch["preference_strength"][real]) == [0.0, 0.25, 0.5, 0.75]
    assert batch["weight"].shape == batch["example_mask"].shape and not batch["weight"][~real].any()


def test_rated_replies_become_pointwise_examples_with_normalised_targets(tmp_path):
    rows = [{"prompt": "Q?", "completion": f" reply {r}", "rating": r} for r in (1, 2, 4, 5)]
    batch = first_batch(jsonl(tmp_path / "r.jsonl", rows), "pointwise", rating_scale=[1, 5])
    real = batch["example_mask"] > 0
    assert sorted(batch["rating"][real]) == [-1.0, -0.5, 0.5, 1.0]
    assert sorted(batch["rating_level"][real]) == [0, 1, 3, 4]
    assert "target_ids" not in batch and (batch["end_index"][..., 0] == batch["end_index"][..., 1]).all()


def test_per_annotator_normalisation_maps_each_annotator_onto_the_pool():
    from jaxalign.data.ratings import normalise

    examples = [TextExample("Q", one_piece(f" r{i}"), f"f:{i}", annotator=who, rating=r)
                for i, (who, r) in enumerate([("harsh", 1), ("harsh", 3), ("kind", 3), ("kind", 5)])]
    out = normalise(examples, [1, 5], "per_annotator")
    # Both annotators spread 1 around their own means 2 and 4; the pool is mean 3, spread sqrt(2).
    assert [round(ex.rating, 4) for ex in out] == [round(3 - 2**0.5, 4), round(3 + 2**0.5, 4)] * 2
    assert [ex.columns["rating_level"] for ex in out] == [1.0, 3.0, 1.0, 3.0]


def ranking_examples(rng, count, most=4):
    examples = []
    for _ in range(count):
        replies = int(rng.integers(2, most + 1))
        prompt = rng.integers(3, 500, rng.integers(1, 30)).astype(np.int32)
        completions = tuple(rng.integers(3, 500, rng.integers(1, 25)).astype(np.int32) for _ in range(replies))
        examples.append(TokenizedExample(prompt, completions, tuple(np.ones(len(c), bool) for c in completions)))
    return examples


def test_rankings_pack_every_reply_after_one_prompt_and_round_trip():
    rng = np.random.default_rng(0)
    examples = ranking_examples(rng, 12)
    batch = pack_examples(examples, slots=12, pack_length=256, pad_to_multiple=16, replies=4, attention_tile=16)
    assert batch["end_index"].shape[-1] == 4 and batch["reply_mask"].shape == batch["end_index"].shape
    assert batch["reply_mask"].sum() == sum(len(ex.completions) for ex in examples)
    recovered = unpack(batch)
    key = lambda ex: tuple(ex.prompt.tolist())  # noqa: E731
    for got, want in zip(sorted(recovered, key=key), sorted(examples, key=key)):
        assert len(got.completions) == len(want.completions)
        assert all(np.array_equal(a, b) for a, b in zip(got.completions, want.completions))
    # Each reply sees its prompt and itself, never another reply; positions continue from the prompt.
    mask = np.asarray(attention_mask(jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["branch_ids"])))
    segments, branches = batch["segment_ids"], batch["branch_ids"]
    for r in range(segments.shape[0]):
        for q in np.flatnonzero(branches[r] > 1):
            keys = np.flatnonzero(mask[r, q])
            assert set(branches[r, keys]) <= {0, branches[r, q]} and (segments[r, keys] == segments[r, q]).all()
            first = np.flatnonzero((segments[r] == segments[r, q]) & (branches[r] == branches[r, q]))[0]
            prompt_length = np.sum((segments[r] == segments[r, q]) & (branches[r] == 0))
            assert batch["positions"][r, first] == prompt_length
    # The block-sparse tile pairs are exactly the tiles holding a visible score.
    want = brute_force_visible_tiles(segments, branches, 16)
    for r in range(segments.shape[0]):
        got = np.zeros_like(want[r])
        used = batch["tile_pairs"][r][batch["tile_pairs"][r, :, 0] >= 0]
        got[used[:, 0], used[:, 1]] = True
        np.testing.assert_array_equal(got, want[r])


def test_pairs_keep_their_layout_when_rankings_exist():
    rng = np.random.default_rng(1)
    pairs = [ex for ex in ranking_examples(rng, 30, most=2) if len(ex.completions) == 2][:8]
    batch = pack_examples(pairs, slots=8, pack_length=256, pad_to_multiple=16)
    assert batch["end_index"].shape[-1] == 2 and "reply_mask" not in batch


def test_listwise_pipeline_and_its_bad_rankings(tmp_path):
    good = [{"prompt": f"Q{i}?", "ranking": [" best", " good", " bad"]} for i in range(4)]
    batch = first_batch(jsonl(tmp_path / "k.jsonl", good), "listwise")
    assert batch["end_index"].shape[-1] == 3 and batch["reply_mask"][batch["example_mask"] > 0].all()
    tie = good[:3] + [{"prompt": "Q?", "ranking": [" best", [" good", " fine"], " bad"]}]
    with pytest.raises(DataError, match=r"t.jsonl:4: field 'ranking': replies tied at position 2"):
        pipeline(jsonl(tmp_path / "t.jsonl", tie), "listwise")
    repeat = good[:3] + [{"prompt": "Q?", "ranking": [" best", " bad", " best"]}]
    with pytest.raises(DataError, match=r"u.jsonl:4: field 'ranking': reply 3 repeats reply 1"):
        pipeline(jsonl(tmp_path / "u.jsonl", repeat), "listwise")
    # As pairs, a tie is usable: no pair between the tied replies, counted.
    data = pipeline(jsonl(tmp_path / "t2.jsonl", tie), "reward")
    assert data.stats["pairs_skipped/tied"] == 1 and data.num_examples == 3 * 3 + 5


def test_critiques_become_revision_pairs_and_conditioned_sft(tmp_path):
    rows = [{"prompt": "\n\nHuman: hi\n\nAssistant:", "response": " go away", "critique": "Rude.",
             "revision": " Hello! How can I help?"},
            {"prompt": "\n\nHuman: hey\n\nAssistant:", "response": " no", "critique": "Unhelpful."}] * 2
    path = jsonl(tmp_path / "c.jsonl", rows)
    pairs = pipeline(path, "preference", batch_size=2)
    assert [ex.reply_texts() for ex in pairs.examples] == [(" Hello! How can I help?", " go away")] * 2
    assert pairs.stats["critique/no_revision"] == 2
    sft = pipeline(path, "sft", batch_size=2).examples
    assert sft[0].prompt == "\n\nHuman: hi\n\nAssistant: go away\n\nCritique: Rude.\n\nRevision:"
    assert sft[0].reply_texts() == (" Hello! How can I help?",) and len(sft) == 2
    critic = pipeline(path, "sft", critique_sft="critique").examples
    assert len(critic) == 4 and critic[1].reply_texts() == (" Unhelpful.",)


def votes_example(annotator, item, right):
    # Two wordings, so that which reply is "first" in an item's fixed order varies from item to item.
    better, worse = (" good", " bad") if item % 2 == 0 else (" alright", " terrible")
    replies = (better, worse) if right else (worse, better)
    return TextExample(f"Q{item}", one_piece(replies[0]) + one_piece(replies[1]), f"f:{item}", annotator=annotator)


def test_agreement_kappa_and_reliability_weights_by_hand():
    examples = []
    for item in range(20):  # a, b, c always right; d wrong on half the items, e on one in five
        examples += [votes_example(who, item, True) for who in "abc"]
        examples.append(votes_example("d", item, item % 4 >= 2))
        examples.append(votes_example("e", item, item % 5 != 0))
    votes, numeric = collect_votes(examples)
    table = agreement_table(votes, numeric)
    # The majority is always right and half its votes fall on each side, as do d's and e's:
    # chance agreement 0.5, so kappa = (agreement - 0.5) / 0.5.
    assert not numeric and table["a"].agreement == 1.0 and table["a"].kappa == 1.0
    assert table["d"].agreement == 0.5 and table["d"].kappa == 0.0 and table["d"].reliability == 0.0
    assert table["e"].agreement == 0.8 and table["e"].kappa == pytest.approx(0.6)
    assert table["e"].reliability == pytest.approx(0.36)
    weighted, _ = apply_reliability(examples, "agreement", 0.0, "annotator", "train")
    weights = {ex.annotator: ex.columns["weight"] for ex in weighted}
    assert weights["a"] == 1.0 and weights["d"] == 0.0 and weights["e"] == pytest.approx(0.36)
    kept, _ = apply_reliability(examples, "none", 0.6, "annotator", "train")
    assert len(kept) == 80 and {ex.annotator for ex in kept} == set("abce")
    assert all("weight" not in ex.columns for ex in kept)
