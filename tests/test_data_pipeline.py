"""The Grain pipeline: resume, epochs, process shards, eval passes, stats, every kind."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from data_fixtures import HH_PATH, builtin_tokenizer, gpt2_tokenizer, needs_shared_data, write_jsonl
from jaxalign.data import DataConfig, DataError, build_pipeline, unpack


def config(**overrides):
    values = dict(train="builtin:preferences", batch_size=64, max_length=128, max_prompt_length=64, read_threads=2)
    values.update(overrides)
    return DataConfig(**values)


def prompts_of(batch):
    """The prompt token tuples of a batch's examples (built-in prompts are unique)."""
    if "prompt_ids" in batch:
        return [tuple(row[mask > 0].tolist()) for row, mask in zip(batch["prompt_ids"], batch["prompt_mask"])
                if mask.any()]
    return [tuple(example.prompt.tolist()) for example in unpack(batch)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for name in x:
            assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), name


def test_resume_restores_the_exact_stream_across_an_epoch_boundary():
    cfg = config(batch_size=256, num_epochs=3)  # 704 pairs -> 2 steps an epoch, 6 batches
    pipeline = build_pipeline(cfg, builtin_tokenizer(), kind="preference")
    assert (pipeline.steps_per_epoch, pipeline.num_batches) == (2, 6)
    iterator = pipeline.iterator()
    for _ in range(3):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))  # checkpoints store it as JSON
    continued = [next(iterator) for _ in range(2)]
    fresh = build_pipeline(cfg, builtin_tokenizer(), kind="preference").iterator()
    fresh.set_state(state)
    assert_same_batches(continued, [next(fresh) for _ in range(2)])
    next(fresh)
    with pytest.raises(StopIteration):
        next(fresh)


def test_each_epoch_is_a_new_permutation_and_the_seed_matters():
    cfg = config(num_epochs=2)
    pipeline = build_pipeline(cfg, builtin_tokenizer(), kind="prompt")
    batches = list(pipeline.iterator())
    assert len(batches) == 2 * pipeline.steps_per_epoch == 22
    first = [p for b in batches[:11] for p in prompts_of(b)]
    second = [p for b in batches[11:] for p in prompts_of(b)]
    assert len(set(first)) == len(first) == 704 and set(first) == set(second) and first != second
    again = [p for b in build_pipeline(cfg, builtin_tokenizer(), kind="prompt").iterator() for p in prompts_of(b)]
    assert again == first + second
    other_seed = build_pipeline(cfg, builtin_tokenizer(), kind="prompt", seed=7).iterator()
    assert prompts_of(next(other_seed)) != prompts_of(batches[0])


def test_two_processes_get_disjoint_shards_that_cover_the_data():
    cfg = config()
    shards = []
    for index in range(2):
        pipeline = build_pipeline(cfg, builtin_tokenizer(), kind="prompt", process_index=index, process_count=2)
        assert pipeline.local_batch_size == 32 and pipeline.steps_per_epoch == 11
        batches = list(pipeline.iterator())
        assert len(batches) == 11 and all(b["example_mask"].sum() == 32 for b in batches)
        shards.append([p for b in batches for p in prompts_of(b)])
    assert not set(shards[0]) & set(shards[1])
    assert len(set(shards[0]) | set(shards[1])) == 704
    # Each global step is the examples the single-process run sees at that step, in its order once the
    # processes' rows are laid end to end (as shard_batch does): RL samples a row's reply by its position.
    single = build_pipeline(cfg, builtin_tokenizer(), kind="prompt").iterator()
    for step in range(3):
        assert prompts_of(next(single)) == shards[0][32 * step:32 * step + 32] + shards[1][32 * step:32 * step + 32]


def test_eval_runs_once_in_order_and_keeps_the_last_partial_batch():
    cfg = config(train="builtin:prompts", eval="builtin:prompts#eval", eval_batch_size=32)
    pipeline = build_pipeline(cfg, builtin_tokenizer(), split="eval", kind="prompt")
    batches = list(pipeline.iterator())
    assert pipeline.num_examples == 124 and len(batches) == pipeline.steps_per_epoch == 4
    assert [b["example_mask"].sum() for b in batches] == [32, 32, 32, 28]
    from jaxalign.data import builtin

    expected = [builtin_tokenizer()(row["prompt"])["input_ids"] for row in builtin.rows("prompts", "eval")]
    assert [list(p) for b in batches for p in prompts_of(b)] == expected
    # Two processes: the same number of batches each; the last global batch is split between them, the
    # first process holding its first 16 examples; end to end they are the single process's rows.
    shares = [list(build_pipeline(cfg, builtin_tokenizer(), split="eval", kind="prompt", process_index=i,
                                  process_count=2).iterator()) for i in range(2)]
    assert [[b["example_mask"].sum() for b in share] for share in shares] == [[16, 16, 16, 16], [16, 16, 16, 12]]
    assert [list(p) for pair in zip(*shares) for b in pair for p in prompts_of(b)] == expected


def test_no_eval_config_gives_none_and_eval_fraction_carves_disjoint_rows():
    assert build_pipeline(config(), builtin_tokenizer(), split="eval") is None
    cfg = config(train="builtin:prompts", eval_fraction=0.25, batch_size=16)
    train = build_pipeline(cfg, builtin_tokenizer(), kind="prompt")
    held = build_pipeline(cfg, builtin_tokenizer(), split="eval", kind="prompt")
    assert (train.num_examples, held.num_examples) == (528, 176)
    assert not {e.prompt for e in train.examples} & {e.prompt for e in held.examples}


def test_every_kind_from_the_builtin_data():
    tok = builtin_tokenizer()
    kto = next(build_pipeline(config(train="builtin:kto"), tok, kind="unpaired").iterator())
    assert set(np.unique(kto["label"][kto["example_mask"] > 0])) == {0.0, 1.0}
    # KTO rows carry the next example's completion as branch 2 (the KL baseline's mismatched pair).
    assert set(np.unique(kto["branch_ids"])) == {0, 1, 2}
    ends = kto["end_index"][kto["example_mask"] > 0]
    assert (ends[:, 1] > ends[:, 0]).all()
    sft = next(build_pipeline(config(train="builtin:sft"), tok, kind="sft").iterator())
    assert sft["example_mask"].sum() == 64 and (sft["end_index"][..., 0] == sft["end_index"][..., 1]).all()
    pairs = build_pipeline(config(), tok, kind="preference")
    assert pairs.pack_length == 256 and pairs.format == "preference"
    batch = next(pairs.iterator())
    assert (batch["branch_ids"] == 2).any() and batch["input_ids"].shape[1] <= 256


def test_conversational_messages_through_the_pipeline(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(8)]
    cfg = config(train=str(write_jsonl(tmp_path / "chat.jsonl", rows)), batch_size=4, shuffle=False)
    batch = next(build_pipeline(cfg, builtin_tokenizer(), kind="sft").iterator())
    first = [e for e in unpack(batch) if builtin_tokenizer().decode(e.prompt).endswith("question 0\n\nAssistant:")][0]
    assert builtin_tokenizer().decode(first.completions[0]) == " answer 0<|endoftext|>"


def test_overlong_drop_leaves_empty_slots_and_counts_them(tmp_path):
    rows = [{"prompt": "Q", "chosen": " yes" * (40 if i % 4 == 0 else 1), "rejected": " no"} for i in range(16)]
    cfg = config(train=str(write_jsonl(tmp_path / "p.jsonl", rows)), batch_size=8, max_length=16, max_prompt_length=8,
                 on_overlong="drop", shuffle=False)
    pipeline = build_pipeline(cfg, builtin_tokenizer(), kind="preference")
    batches = list(pipeline.iterator())
    assert [b["example_mask"].sum() for b in batches] == [6, 6]
    stats = pipeline.stats
    assert stats["dropped/overlong"] == 4 and stats["examples_packed"] == 12 and stats["batches"] == 2
    # Raised while the shape ladder packs the first batches at build time (or, past them, when read).
    with pytest.raises(DataError, match=r"p.jsonl:1: field 'chosen': prompt \+ chosen is"):
        next(build_pipeline(DataConfig(**{**cfg.__dict__, "on_overlong": "raise"}), builtin_tokenizer()).iterator())


def test_bad_rows_raise_at_build_time_or_are_counted(tmp_path):
    rows = [{"prompt": "Q", "chosen": " y", "rejected": " n"}] * 9 + ['{"prompt": oops}', {"prompt": "Q", "chosen": 1, "rejected": " n"}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=rf"{path}:10: undecodable JSON line"):
        build_pipeline(config(train=str(path), batch_size=4), builtin_tokenizer())
    pipeline = build_pipeline(config(train=str(path), batch_size=4, on_bad_row="skip", max_skipped_fraction=0.2),
                              builtin_tokenizer())
    assert pipeline.num_examples == 9 and pipeline.steps_per_epoch == 2
    assert {k: v for k, v in pipeline.stats.items() if k.startswith(("rows", "skipped"))} == {
        "rows_read": 11, "rows_kept": 9, "rows_skipped": 2, "skipped/bad_json": 1, "skipped/wrong_type": 1}


def test_shape_agreement_pads_every_batch():
    seen = []

    def agree(shape):
        seen.append(shape)
        return (shape[0] * 2, 512, shape[2] + 64, shape[3] + 16)

    batch = next(build_pipeline(config(), builtin_tokenizer(), shape_agreement=agree).iterator())
    assert batch["input_ids"].shape == (seen[0][0] * 2, 512) and batch["target_ids"].shape[1] == seen[0][2] + 64
    assert batch["tile_pairs"].shape == (seen[0][0] * 2, seen[0][3] + 16, 2)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(format="csv"), "format must be one of"),
        (dict(on_bad_row="ignore"), "on_bad_row must be one of"),
        (dict(eval="x.jsonl", eval_fraction=0.1), "either eval"),
        (dict(max_prompt_length=128), "max_prompt_length must be between 1 and max_length - 1"),
        (dict(batch_size=0), "batch_size must be >= 1"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_pipeline_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        build_pipeline(config(), builtin_tokenizer(), process_count=3)
    with pytest.raises(ValueError, match="fewer than batch_size 1024"):
        build_pipeline(config(batch_size=1024), builtin_tokenizer())
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        build_pipeline(config(train=str(tmp_path / "missing.jsonl")), builtin_tokenizer())
    with pytest.raises(ValueError, match="cannot feed preference training"):
        build_pipeline(config(train="builtin:prompts"), builtin_tokenizer(), kind="preference")


@needs_shared_data
def test_hh_rlhf_pass_throughput(capsys):
    cfg = DataConfig(train=str(HH_PATH), batch_size=8, max_length=512, max_prompt_length=256, on_bad_row="skip")
    start = time.perf_counter()
    pipeline = build_pipeline(cfg, gpt2_tokenizer(), kind="preference")
    built = time.perf_counter()
    batches = sum(1 for _ in pipeline.iterator())
    elapsed = time.perf_counter() - built
    stats = pipeline.stats
    assert batches == pipeline.steps_per_epoch == 2348 // 8 and stats["examples_packed"] == 2344
    assert stats["skipped/chosen_equals_rejected"] == 2
    with capsys.disabled():
        print(f"\nHH-RLHF pipeline: read+format {stats['rows_read'] / (built - start):.0f} rows/s; "
              f"tokenize+pack {stats['examples_packed'] / elapsed:.0f} pairs/s (2 reader threads); "
              f"{stats['truncated']} truncated; {stats['tokens'] / stats['token_slots']:.1%} of slots real tokens")


def test_reward_batches_are_preference_batches_without_targets():
    """A reward model reads only end_index, so its batches drop the target arrays
    (and with them the target-slot count from the shapes the step compiles for)."""
    preference = next(build_pipeline(config(), builtin_tokenizer(), kind="preference").iterator())
    reward = next(build_pipeline(config(), builtin_tokenizer(), kind="reward").iterator())
    assert sorted(reward) == sorted(key for key in preference if not key.startswith("target_"))
    for key, value in reward.items():
        np.testing.assert_array_equal(value, preference[key])
