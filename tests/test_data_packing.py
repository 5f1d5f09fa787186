"""Packing: layout invariants, round trips through unpack, bucketed shapes, efficiency on HH-RLHF."""

from __future__ import annotations

import numpy as np
import pytest

from data_fixtures import HH_PATH, gpt2_tokenizer, needs_shared_data, same_example
from jaxalign.data import ExampleTokenizer, TokenizedExample, pack_examples, pack_prompts, pad_batch, unpack
from jaxalign.data.packing import batch_shape, bucket_rows, candidate_layouts, first_fit_decreasing
from jaxalign.data.shapes import shape_cost
from jaxalign.data.tile_pairs import attention_tile_pairs


def make_example(rng, paired=True, prompt_loss=False, partial_mask=False, margin=None, label=None):
    prompt = rng.integers(3, 1000, rng.integers(1, 40)).astype(np.int32)
    completions = tuple(rng.integers(3, 1000, rng.integers(1, 60)).astype(np.int32) for _ in range(2 if paired else 1))
    masks = tuple(rng.random(len(c)) < 0.6 if partial_mask else np.ones(len(c), bool) for c in completions)
    return TokenizedExample(prompt, completions, masks, prompt_loss, margin, label)


def key(example):
    return (tuple(example.prompt.tolist()), *(tuple(c.tolist()) for c in example.completions))


def assert_round_trip(examples, batch):
    recovered = sorted(unpack(batch), key=key)
    assert len(recovered) == len(examples)
    for got, want in zip(recovered, sorted(examples, key=key)):
        assert same_example(got, want)


def test_pairs_round_trip_with_margins():
    rng = np.random.default_rng(0)
    examples = [make_example(rng, margin=float(rng.integers(0, 5))) for _ in range(16)]
    batch = pack_examples(examples, slots=16, pack_length=128, pad_to_multiple=16)
    assert_round_trip(examples, batch)
    assert set(batch) >= {"margin"} and "label" not in batch


def test_unpaired_and_sft_round_trip():
    rng = np.random.default_rng(1)
    kto = [make_example(rng, paired=False, label=float(i % 2)) for i in range(12)]
    assert_round_trip(kto, pack_examples(kto, slots=12, pack_length=96))
    sft = [make_example(rng, paired=False, partial_mask=True) for _ in range(10)]
    assert_round_trip(sft, pack_examples(sft, slots=10, pack_length=96))
    all_tokens = [make_example(rng, paired=False, prompt_loss=True) for _ in range(10)]
    batch = pack_examples(all_tokens, slots=10, pack_length=96)
    assert_round_trip(all_tokens, batch)
    # Every token after the first of each example is a target.
    assert (batch["target_segment"] > 0).sum() == sum(e.length - 1 for e in all_tokens)


def test_pair_layout_positions_and_first_rejected_target():
    prompt, chosen, rejected = np.array([5, 6, 7], np.int32), np.array([8, 9], np.int32), np.array([10, 11, 12], np.int32)
    example = TokenizedExample(prompt, (chosen, rejected), (np.ones(2, bool), np.ones(3, bool)))
    batch = pack_examples([example], slots=2, pack_length=16, pad_to_multiple=8)
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 10, 11, 12]
    assert batch["positions"][0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]  # rejected continues from the prompt end
    assert batch["branch_ids"][0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert batch["segment_ids"][0].tolist() == [1] * 8
    used = batch["target_segment"][0] > 0
    assert batch["target_ids"][0][used].tolist() == [8, 9, 10, 11, 12]
    assert batch["target_index"][0][used].tolist() == [2, 3, 2, 5, 6]  # first rejected token <- last prompt token
    assert batch["target_branch"][0][used].tolist() == [1, 1, 2, 2, 2]
    assert batch["end_index"][0].tolist() == [[4, 7], [0, 0]]
    assert batch["example_mask"].tolist() == [[1.0, 0.0]]


def test_rejected_never_attends_to_chosen():
    from jaxalign.batch import attention_mask

    rng = np.random.default_rng(2)
    batch = pack_examples([make_example(rng) for _ in range(4)], slots=4, pack_length=256)
    mask = np.asarray(attention_mask(batch["segment_ids"], batch["branch_ids"]))
    branch, segment = batch["branch_ids"], batch["segment_ids"]
    query_rejected = (branch == 2)[:, :, None]
    key_chosen = (branch == 1)[:, None, :]
    assert not (mask & query_rejected & key_chosen).any()
    # ... but sees its own prompt.
    same_slot = segment[:, :, None] == segment[:, None, :]
    key_prompt = ((branch == 0) & (segment > 0))[:, None, :]
    assert (mask | ~(query_rejected & key_prompt & same_slot)).all()


def test_shapes_are_bucketed_and_padding_is_zero():
    rng = np.random.default_rng(3)
    examples = [make_example(rng) for _ in range(11)]
    batch = pack_examples(examples, slots=16, pack_length=200, pad_to_multiple=64, row_multiple=3)
    rows, length, width, pairs = batch_shape(batch)
    assert pairs == 0 and "tile_pairs" not in batch  # no attention_tile asked for
    assert length % 64 == 0 or length == 200
    assert length <= 200 and width % 64 == 0
    assert rows % 3 == 0 and bucket_rows(rows, 3) == rows  # a bucket size of row_multiple 3
    assert batch["example_mask"].shape == (rows, 16) and batch["end_index"].shape == (rows, 16, 2)
    assert batch["example_mask"].sum() == 11
    pad = batch["segment_ids"] == 0
    assert not batch["input_ids"][pad].any() and not batch["positions"][pad].any() and not batch["branch_ids"][pad].any()
    unused = batch["target_segment"] == 0
    assert not batch["target_ids"][unused].any() and not batch["target_index"][unused].any()
    # Rows hold whole examples and never more than pack_length tokens.
    assert ((batch["segment_ids"] > 0).sum(axis=1) <= 200).all()


def test_bucket_rows_and_first_fit_decreasing():
    assert [bucket_rows(n, 1) for n in range(10)] == [1, 1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert [bucket_rows(n, 1) for n in (11, 13, 16, 17, 21, 25, 33, 65)] == [12, 14, 16, 20, 24, 28, 40, 80]
    assert [bucket_rows(n, 4) for n in (1, 4, 5, 9, 17, 33)] == [4, 4, 8, 12, 20, 40]
    # Never more than 25% padding rows; few sizes (4 an octave) so few compiled shapes.
    assert all(bucket_rows(n, 1) <= 1.25 * n for n in range(1, 2000))
    assert len({bucket_rows(n, 1) for n in range(257, 513)}) == 4
    assert first_fit_decreasing([5, 3, 8, 2, 6], capacity=10) == [[2, 3], [4, 1], [0]]
    assert first_fit_decreasing([15, 4], capacity=10) == [[0], [1]]  # too long: a row of its own


def test_example_longer_than_pack_length_gets_its_own_row():
    rng = np.random.default_rng(4)
    big = TokenizedExample(np.arange(3, 100, dtype=np.int32), (np.arange(3, 60, dtype=np.int32),), (np.ones(57, bool),))
    batch = pack_examples([big, make_example(rng, paired=False)], slots=2, pack_length=64, pad_to_multiple=64)
    assert batch["input_ids"].shape[1] == 192  # 154 tokens, rounded up; the cap does not apply
    assert np.unique(batch["segment_ids"][0]).tolist() == [0, 1]
    assert_round_trip([big], {k: v[:1] for k, v in batch.items()})


def test_empty_batch_is_all_padding():
    batch = pack_examples([], slots=4, pack_length=64, pad_to_multiple=16, row_multiple=2)
    assert batch_shape(batch) == (2, 16, 16, 0) and not any(v.any() for v in batch.values())


def test_unpack_rejects_a_wrong_target():
    rng = np.random.default_rng(5)
    batch = pack_examples([make_example(rng)], slots=1, pack_length=256)
    batch["target_index"][0, 3] += 1
    with pytest.raises(ValueError, match="row 0 slot 1"):
        unpack(batch)


def test_pack_prompts_left_pads():
    prompts = [TokenizedExample(np.array(p, np.int32), (), ()) for p in ([4, 5, 6], [7])]
    batch = pack_prompts(prompts, slots=3, pad_to_multiple=4, row_multiple=2)
    assert batch["prompt_ids"].tolist() == [[0, 4, 5, 6], [0, 0, 0, 7], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert batch["prompt_mask"].sum(axis=1).tolist() == [3, 1, 0, 0]
    assert batch["example_mask"].tolist() == [1, 1, 0, 0]


def example_of_length(prompt: int, *replies: int) -> TokenizedExample:
    ids = lambda n: np.arange(3, 3 + n, dtype=np.int32)  # noqa: E731
    return TokenizedExample(ids(prompt), tuple(ids(n) for n in replies), tuple(np.ones(n, bool) for n in replies), False)


def test_a_cost_picks_the_cheapest_packing_and_a_tie_keeps_rows_of_pack_length():
    # 70 + 50 + 50 tokens. Rows of 128: [70, 50] and [50] -> 2 x 128 = 256 slots; rows of 112:
    # [70] and [50, 50] -> 2 x 112 = 224; rows of 80 or 96: three rows of 80 = 240.
    examples = [example_of_length(10, 30, 30), example_of_length(10, 20, 20), example_of_length(10, 20, 20)]
    kw = dict(slots=3, pack_length=128, pad_to_multiple=16)
    assert batch_shape(pack_examples(examples, **kw))[:2] == (2, 128)
    layouts = candidate_layouts(examples, pack_length=128, pad_to_multiple=16)
    assert [layout.shape[:2] for layout in layouts] == [(2, 128), (2, 112), (3, 80)]  # distinct packings only
    cheapest = pack_examples(examples, **kw, cost=shape_cost)
    assert batch_shape(cheapest)[:2] == (2, 112)
    assert_round_trip(examples, cheapest)
    # Four examples of 60: two rows of 128 or four of 64 cost the same 256 slots; the tie keeps 128.
    four = [example_of_length(20, 20, 20) for _ in range(4)]
    assert batch_shape(pack_examples(four, slots=4, pack_length=128, pad_to_multiple=16, cost=shape_cost))[:2] == (2, 128)
    # An example longer than pack_length: its own row, as without a cost.
    long = [example_of_length(100, 40, 40), example_of_length(10, 5, 5)]
    assert ([layout.shape[:2] for layout in candidate_layouts(long, pack_length=128, pad_to_multiple=16)]
            == [batch_shape(pack_examples(long, slots=2, pack_length=128, pad_to_multiple=16))[:2]])


def test_candidate_row_lengths_are_bounded_whatever_the_multiple():
    from jaxalign.data.packing import MAX_ROW_LENGTHS

    rng = np.random.default_rng(3)
    examples = [make_example(rng) for _ in range(6)]
    every_64 = candidate_layouts(examples, pack_length=1024, pad_to_multiple=64)
    assert {layout.shape[1] for layout in every_64} <= set(range(64, 1025, 64))
    tokens = candidate_layouts(examples, pack_length=4096, pad_to_multiple=1)  # would be thousands of lengths
    assert 1 < len(tokens) <= MAX_ROW_LENGTHS and tokens[0].bins == first_fit_decreasing(
        [e.length for e in examples], 4096)
    longest = max(e.length for e in examples)
    assert all(longest <= layout.shape[1] <= 4096 for layout in tokens)


@pytest.mark.parametrize("seed", range(6))
def test_every_candidate_layout_is_the_shape_and_tile_pairs_its_arrays_have(seed):
    """pack_examples prices layouts before it writes any array: each layout's shape and tile
    pairs (computed from the examples' spans) must be exactly the packed batch's."""
    rng = np.random.default_rng(seed)
    examples = [make_example(rng, paired=bool(seed % 2), partial_mask=True) for _ in range(int(rng.integers(1, 9)))]
    kw = dict(pack_length=160, pad_to_multiple=16, row_multiple=int(rng.choice([1, 2])), attention_tile=16)
    for targets in (True, False):
        layouts = candidate_layouts(examples, **kw, targets=targets)
        assert layouts[0].bins == first_fit_decreasing([e.length for e in examples], 160)
        assert len({tuple(map(tuple, layout.bins)) for layout in layouts}) == len(layouts)
        for layout in layouts:
            batch = pack_examples(examples, slots=8, **kw, targets=targets,
                                  cost=lambda shape, want=layout.shape: shape != want)
            assert batch_shape(batch) == layout.shape
            np.testing.assert_array_equal(
                batch["tile_pairs"], attention_tile_pairs(batch["segment_ids"], batch["branch_ids"], 16))
            if targets:
                assert_round_trip(examples, batch)


def test_pad_batch_to_an_agreed_shape():
    rng = np.random.default_rng(6)
    batch = pack_examples([make_example(rng) for _ in range(3)], slots=3, pack_length=128, attention_tile=16)
    rows, length, width, pairs = batch_shape(batch)
    assert pairs % (length // 16) == 0 and pairs > 0
    padded = pad_batch(batch, (rows * 2, length + 64, width + 64, pairs + 8))
    assert batch_shape(padded) == (rows * 2, length + 64, width + 64, pairs + 8)
    assert padded["end_index"].shape == (rows * 2, 3, 2)
    assert (padded["tile_pairs"][:, pairs:] == -1).all() and (padded["tile_pairs"][rows:] == -1).all()
    assert_round_trip(unpack(batch), padded)
    with pytest.raises(ValueError, match="cannot pad"):
        pad_batch(batch, (rows - 1, length, width, pairs))


def _padded_baseline_slots(examples):
    """TRL-style: chosen and rejected each as prompt + reply, all padded to the batch's longest."""
    longest = max(len(e.prompt) + len(c) for e in examples for c in e.completions)
    return 2 * len(examples) * longest


@needs_shared_data
def test_packing_efficiency_on_hh_rlhf(capsys):
    from jaxalign.data.formats import format_rows
    from jaxalign.data.errors import Counter
    from jaxalign.data.sources import read_rows

    texts = format_rows(read_rows(str(HH_PATH)), "implicit_preference", "preference", None, "skip", Counter())
    to_tokens = ExampleTokenizer(gpt2_tokenizer(), max_length=1024, max_prompt_length=None)
    examples = [to_tokens(t) for t in texts]
    batch_pairs = 8
    real = padded_real = packed_slots = padded_slots = 0
    for start in range(0, len(examples) - batch_pairs + 1, batch_pairs):
        chunk = examples[start:start + batch_pairs]
        batch = pack_examples(chunk, slots=batch_pairs, pack_length=2048)
        if start < 80:
            assert_round_trip(chunk, batch)
        real += sum(e.length for e in chunk)
        padded_real += sum(2 * len(e.prompt) + sum(len(c) for c in e.completions) for e in chunk)
        packed_slots += batch["input_ids"].size
        padded_slots += _padded_baseline_slots(chunk)
    packed_efficiency, padded_efficiency = real / packed_slots, padded_real / padded_slots
    with capsys.disabled():
        print(f"\nHH-RLHF, GPT-2 tokens, 8 pairs a batch: packed {packed_efficiency:.1%} real tokens "
              f"({packed_slots / len(examples):.0f} slots/pair), padded chosen+rejected {padded_efficiency:.1%} "
              f"({padded_slots / len(examples):.0f} slots/pair)")
    assert packed_efficiency > padded_efficiency
    assert packed_slots < 0.8 * padded_slots


def test_targets_are_flat_per_row_group_and_padding_keeps_each_row_in_its_group():
    import jax.numpy as jnp

    from jaxalign.batch import target_counts

    rng = np.random.default_rng(5)
    examples = [make_example(rng, partial_mask=True) for _ in range(8)]
    batch = pack_examples(examples, slots=8, pack_length=120, pad_to_multiple=16, row_multiple=2)
    rows, length, width, _ = batch_shape(batch)
    assert batch["target_index"].shape == (2, width) and rows % 2 == 0
    # One list per group: its slots are the group's targets rounded up to 16, not each row's longest list.
    per_group = (batch["target_segment"] > 0).sum(axis=1)
    assert width == -(-per_group.max() // 16) * 16
    assert per_group.sum() == sum(int(m.sum()) for e in examples for m in e.loss_masks)
    padded = pad_batch(batch, (rows + 4, length + 32, width + 16, 0))
    assert_round_trip(examples, padded)
    # Token counts per (row, slot, branch) land where the examples are, before and after padding.
    for packed in (batch, padded):
        counts = np.asarray(target_counts({k: jnp.asarray(v) for k, v in packed.items()}))
        expected = np.zeros_like(counts)
        places = zip(*np.nonzero(packed["example_mask"]))  # (row, slot) in unpack's order
        for (r, slot), example in zip(places, unpack(packed)):
            expected[r, slot] = [mask.sum() for mask in example.loss_masks]
        np.testing.assert_array_equal(counts, expected)
        assert counts.sum() == per_group.sum()
