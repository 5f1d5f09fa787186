"""The batch shape ladder (data.max_shapes) and the persistent compilation cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest

from data_fixtures import HH_PATH, gpt2_tokenizer, needs_shared_data
from jaxalign.data import DataConfig, build_pipeline
from jaxalign.data.packing import batch_shape
from jaxalign.data.shapes import fit_ladder, fit_shape, largest_shape, shape_cost


def test_ladder_is_bounded_holds_every_need_and_ends_at_the_largest_shape():
    needs = [(2, 1024, 448, 64), (2, 1024, 512, 80), (3, 1024, 640, 80), (1, 960, 320, 45)] * 5 + [(3, 1024, 832, 80)]
    batches = [[need] for need in needs]  # each batch packed one way
    largest = largest_shape(slots=8, pack_length=1024, longest_example=1024, pad_to_multiple=64, attention_tile=64)
    # 8 rows of 1,024 tokens, all targets (one row group), 16 tiles: 136 causal pairs rounded up to a multiple of 16.
    assert largest == (8, 1024, 8192, 144)
    for max_shapes in (1, 2, 3, 8):
        ladder = fit_ladder(batches, largest, max_shapes)
        assert len(ladder) <= max_shapes and ladder[-1] == largest
        for need in needs:
            assert all(w <= h for w, h in zip(need, fit_shape(ladder, need)))
    # Enough levels: every distinct need is its own level, so nothing is padded.
    assert set(fit_ladder(batches, largest, 8)) == set(needs) | {largest}
    with pytest.raises(ValueError, match="exceeds the largest shape"):
        fit_shape(fit_ladder(batches, largest, 4), (9, 1024, 64, 16))


def test_a_short_run_gets_fewer_shapes_and_a_long_run_the_full_ladder():
    """A level that adds a compiled shape must save more padding over the run than one
    batch's own cost; a level that takes over every batch of another adds no compile."""
    needs = [(2, 1024, 448, 64), (2, 1024, 512, 80), (3, 1024, 640, 80), (1, 960, 320, 45)] * 5 + [(3, 1024, 832, 80)]
    batches = [[need] for need in needs]
    largest = largest_shape(slots=8, pack_length=1024, longest_example=1024, pad_to_multiple=64, attention_tile=64)
    full = fit_ladder(batches, largest, 8)
    assert fit_ladder(batches, largest, 8, run_scale=1e6) == full
    short = fit_ladder(batches, largest, 8, run_scale=1 / len(needs))  # a run of one batch
    assert len(short) < len(full) and short[-1] == largest
    used = {fit_shape(short, need) for need in needs}
    assert len(used) == 1 and largest not in used  # one compile, not at the largest shape
    # The longer the run, the more shapes it compiles, up to the full ladder's.
    compiled = []
    for scale in (1 / len(needs), 0.2, 1.0, 5.0, 1e6):
        ladder = fit_ladder(batches, largest, 8, run_scale=scale)
        assert ladder[-1] == largest
        compiled.append(len({fit_shape(ladder, need) for need in needs}))
    assert compiled == sorted(compiled) and compiled[0] == 1 and compiled[-1] == len(set(needs))
    assert len(set(compiled)) > 2


def test_a_batch_that_packs_two_ways_pays_for_the_cheapest_level_holding_either():
    largest = largest_shape(slots=8, pack_length=1024, longest_example=1024, pad_to_multiple=64, attention_tile=64)
    usual = (3, 768, 512, 60)
    long_rows, short_rows = (2, 1024, 640, 80), (3, 704, 512, 55)  # one batch, packed two ways
    both = fit_ladder([[usual]] * 5 + [[long_rows, short_rows]] * 5, largest, 2)
    assert both == (usual, largest) and fit_shape(both, short_rows) == usual  # the usual level holds it
    only_long = fit_ladder([[usual]] * 5 + [[long_rows]] * 5, largest, 2)
    assert only_long == ((3, 1024, 640, 80), largest)  # the one level must hold both


def sample_price(ladder, needs, run_scale):
    """What fit_ladder minimises: each batch's cheapest level holding one of its shapes,
    plus, per level some batch uses, one batch's own cost spread over the run."""
    paid = [min(shape_cost(level) for level in ladder for shape in need if all(w <= h for w, h in zip(shape, level)))
            for need in needs]
    used = {min((level for level in ladder for shape in need if all(w <= h for w, h in zip(shape, level))),
                key=shape_cost) for need in needs}
    own = np.mean([min(shape_cost(shape) for shape in need) for need in needs])
    return sum(paid) + (0 if run_scale is None else own / run_scale) * len(used)


@pytest.mark.parametrize("seed", range(6))
def test_choosing_among_packings_never_pads_the_sample_more_than_rows_of_pack_length(seed):
    rng = np.random.default_rng(seed)
    largest = (8, 1024, 2048, 144)

    def packed_shape():
        return (int(rng.integers(1, 5)), int(rng.choice([576, 704, 768, 832, 960, 1024])),
                int(rng.choice([256, 512, 768])), int(rng.integers(20, 100)))

    needs = [[packed_shape() for _ in range(int(rng.integers(1, 4)))] for _ in range(40)]
    for run_scale in (None, 0.05, 0.5, 5.0):
        for max_shapes in (2, 4, 8):
            ladder = fit_ladder(needs, largest, max_shapes, run_scale=run_scale)
            assert len(ladder) <= max_shapes and ladder[-1] == largest
            rows_of_pack_length = fit_ladder([need[:1] for need in needs], largest, max_shapes, run_scale=run_scale)
            assert sample_price(ladder, needs, run_scale) <= sample_price(rows_of_pack_length, needs, run_scale)


@needs_shared_data
def test_the_trainers_run_length_bounds_the_shapes_a_short_run_compiles():
    base = dict(train=str(HH_PATH), batch_size=8, max_length=512, max_prompt_length=256, on_bad_row="skip",
                shuffle=False)
    met = {}
    for max_batches in (None, 14):
        pipeline = build_pipeline(DataConfig(**base), gpt2_tokenizer(), kind="preference", max_batches=max_batches)
        met[max_batches] = {batch_shape(batch) for _, batch in zip(range(14), pipeline.iterator())}
        assert met[max_batches] <= set(pipeline.shapes)
    assert len(met[14]) < len(met[None])  # measured: 2 against 6 in the first 14 batches


def test_compile_cost_trades_levels_for_compiles():
    """data.compile_cost_batches: a dearer compile never buys more levels; at 0 a short run
    gets the ladder fitted without a run length."""
    needs = [(2, 1024, 448, 64), (2, 1024, 512, 80), (3, 1024, 640, 80), (1, 960, 320, 45)] * 5 + [(3, 1024, 832, 80)]
    batches = [[need] for need in needs]
    largest = largest_shape(slots=8, pack_length=1024, longest_example=1024, pad_to_multiple=64, attention_tile=64)
    short = 1.0  # a run as long as the sample
    ladders = [fit_ladder(batches, largest, 8, run_scale=short, compile_cost=cost) for cost in (0.0, 1.0, 4.0, 1e9)]
    assert ladders[0] == fit_ladder(batches, largest, 8)
    assert [len(ladder) for ladder in ladders] == sorted((len(ladder) for ladder in ladders), reverse=True)
    assert len(ladders[0]) > len(ladders[-1])
    assert fit_ladder(batches, largest, 8, run_scale=short) == ladders[1]  # the default is one batch


@needs_shared_data
def test_a_short_run_fits_its_ladder_to_the_batches_it_reads():
    # A run shorter than the sample lays out exactly its own batches at start-up (14, not 128):
    # with free compiles its ladder pads them less than one fitted to the epoch's first 128
    # (measured: 25,536 slots against 27,712); at the default cost it keeps fewer levels.
    base = dict(train=str(HH_PATH), batch_size=8, max_length=512, max_prompt_length=256, on_bad_row="skip",
                shuffle=False)
    free = DataConfig(**base, compile_cost_batches=0)
    epoch = build_pipeline(free, gpt2_tokenizer(), kind="preference")
    short_free = build_pipeline(free, gpt2_tokenizer(), kind="preference", max_batches=14)
    short = build_pipeline(DataConfig(**base), gpt2_tokenizer(), kind="preference", max_batches=14)

    def slots(pipeline) -> int:
        return sum(batch["segment_ids"].size for _, batch in zip(range(14), pipeline.iterator()))

    assert slots(short_free) < slots(epoch) and len(short.shapes) < len(short_free.shapes)


def test_max_shapes_is_validated():
    with pytest.raises(ValueError, match="data: max_shapes must be >= 0"):
        DataConfig(train="x.jsonl", max_shapes=-1)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="data: compile_cost_batches must be >= 0"):
            DataConfig(train="x.jsonl", compile_cost_batches=bad)


@needs_shared_data
def test_hh_rlhf_epoch_meets_at_most_max_shapes_and_keeps_most_of_the_fill(tmp_path):
    # HH-RLHF pairs, 8 a batch, shuffled, 75 batches; measured: 62 distinct shapes unbounded, 7 with the ladder.
    base = dict(train=str(HH_PATH), batch_size=8, max_length=512, max_prompt_length=256, on_bad_row="skip")
    fills = {}
    for max_shapes in (0, 8):
        cfg = DataConfig(**base, max_shapes=max_shapes)
        pipeline = build_pipeline(cfg, gpt2_tokenizer(), kind="preference")
        shapes, tokens, slots = Counter(), 0, 0
        for step, batch in zip(range(75), pipeline.iterator()):
            shapes[batch_shape(batch)] += 1
            tokens += int((batch["segment_ids"] > 0).sum())
            slots += batch["segment_ids"].size
        fills[max_shapes] = tokens / slots
        if max_shapes:
            assert len(shapes) <= max_shapes and set(shapes) <= set(pipeline.shapes)
        else:
            assert len(shapes) > 8 and pipeline.shapes is None
    assert fills[8] > 0.95 * fills[0]  # measured 0.909 against 0.945
    # Each batch laid out in rows of the length its level prices least; in rows of
    # pack_length alone (before) these batches filled 0.773 (0.777 without the ladder).
    assert fills[8] > 0.85


def test_a_second_process_loads_compiled_executables_from_the_cache(tmp_path):
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp
        from jaxalign.compilation import CompilationConfig, CompileCounter, enable_compilation_cache
        enable_compilation_cache(CompilationConfig(cache_dir=%r, min_compile_seconds=0.0))
        counter = CompileCounter()
        jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()
        print(counter.metrics())
    """ % str(tmp_path / "xla"))
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120) for _ in range(2)]
    metrics = [eval(run.stdout.strip().splitlines()[-1]) for run in runs]
    assert metrics[0]["perf/compiles"] >= 1 and metrics[0]["perf/compile_cache_hits"] == 0
    assert metrics[1]["perf/compile_cache_hits"] >= 1
    assert any((tmp_path / "xla").iterdir())


def test_train_metrics_report_compiles(tmp_path):
    from jaxalign import cli
    from tests.train_fixtures import read_metrics, tiny_run_config, write_config

    config = tiny_run_config(tmp_path / "run", algo="sft", max_steps=3, eval_batches=1,
                             data={"train": "builtin:sft", "eval": "builtin:sft#eval", "batch_size": 8,
                                   "max_length": 96, "pad_to_multiple": 32})
    assert cli.main(["train", str(write_config(tmp_path / "c.yaml", config))]) == 0
    metrics = read_metrics(tmp_path / "run")
    first, last = metrics[1], metrics[max(metrics)]
    assert first["train/perf/compiles"] >= 1 and first["train/perf/compile_seconds"] > 0
    assert last["train/perf/compiles"] >= first["train/perf/compiles"]  # totals since the run started
    assert "train/perf/compile_cache_hits" in last
