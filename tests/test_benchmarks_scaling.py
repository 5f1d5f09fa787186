"""benchmarks/scaling.py: the growth-exponent fit, the lengthened HH-RLHF pairs, and
(slow) one training point end to end on a tiny model."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from data_fixtures import GPT2_PATH, HH_PATH, needs_shared_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import scaling  # noqa: E402


def test_growth_exponent_recovers_power_laws():
    xs = [256, 512, 1024, 2048]
    assert scaling.growth_exponent(xs, [3.0 * x ** 1.5 for x in xs]) == pytest.approx(1.5, abs=1e-12)
    assert scaling.growth_exponent(xs, [0.25] * 4) == pytest.approx(0.0, abs=1e-12)
    # Off a power law the fit is the least-squares slope in log-log: points (0, 0), (ln 2, ln 2), (ln 4, 0)
    # give slope 0 (symmetric about the middle point)...
    assert scaling.growth_exponent([1, 2, 4], [1.0, 2.0, 1.0]) == pytest.approx(0.0, abs=1e-12)
    # ... and (0, 0), (ln 2, 0), (ln 4, ln 8): slope = sum(dx * dy) / sum(dx^2) = (ln 2 * ln 8) / (2 (ln 2)^2) = 1.5.
    assert scaling.growth_exponent([1, 2, 4], [1.0, 1.0, 8.0]) == pytest.approx(1.5, abs=1e-12)
    # A failed point (None) is left out; one point cannot give a slope.
    assert scaling.growth_exponent([4, 8, 16], [1.0, None, 4.0]) == pytest.approx(1.0)
    assert math.isnan(scaling.growth_exponent([4], [1.0]))


def test_axes_share_the_common_point_once():
    grid = scaling.GRIDS["quick"]
    keys = [scaling.point_key(axis["kind"], point) for axis in scaling.axes(grid, ["dpo"]) for point in axis["points"]]
    # 256/4 lies on both DPO axes: the runner measures it once and both tables show it.
    assert len(keys) == len(grid["lengths"]) + len(grid["pairs"])
    assert len(set(keys)) == len(keys) - 1


@needs_shared_data
def test_hh_pairs_to_length_fill_towards_max_length_without_truncation():
    tokenizer = common.gpt2_tokenizer(GPT2_PATH)
    for max_length in (256, 1024):
        pairs, counts = common.hh_pairs_to_length(HH_PATH, tokenizer, max_length, 6)
        originals, _ = common.hh_pairs(HH_PATH, tokenizer, max_length, limit=6 + common.CONTEXT_ROWS)
        assert len(pairs) == 6
        for pair, original in zip(pairs, originals[-6:]):
            # Neither trainer truncates: prompt + longer reply + EOS fits with a token to spare.
            assert common.pair_length(tokenizer, pair) <= max_length - 1
            # Only the context grows: the replies and the original prompt are kept whole.
            assert (pair["chosen"], pair["rejected"]) == (original["chosen"], original["rejected"])
            assert pair["prompt"].endswith(original["prompt"])
            assert pair["prompt"].startswith("\n\nHuman:")
        # Measured: mean 234 of 256, 1015 of 1024 (whole exchanges are added, so not exactly max_length).
        assert counts["mean_length"] >= 0.85 * max_length
    assert counts["min_length"] > 512  # at 1024 every pair was lengthened, not just the long ones


@pytest.mark.slow
@needs_shared_data
def test_smallest_training_point_runs_both_sides(tmp_path):
    """One RM point on a tiny Llama through scaling_point's three processes (~40 s)."""
    # The TRL side runs in a worker process, where a missing trl would only show as that worker's traceback.
    pytest.importorskip("trl", reason="TRL (the benchmark's peer) is not installed: pip install -e '.[test]'")
    import scaling_point

    tokenizer = common.gpt2_tokenizer(GPT2_PATH)
    config = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512, pad_token_id=50256,
                  eos_token_id=50256, bos_token_id=50256, tie_word_embeddings=False)
    common.build_llama(tmp_path / "rm", head="score", **config)
    result = scaling_point.train_point({"workload": "rm", "max_length": 128, "pairs": 2,
                                        "ckpt": str(tmp_path / "rm"), "lr": 1e-5, "warmup": 1, "steps": 2})
    assert len(result["jaxalign_step_seconds"]) == len(result["trl_step_seconds"]) == 3
    assert result["jaxalign_s"] > 0 and result["trl_s"] > 0
    # Every step has the same pairs, so only the warm-up step meets a new shape.
    assert result["timed_steps_with_new_shape"] == 0
    # Each side's peak is its own process's, at least what it held once set up.
    assert result["jaxalign_peak_rss_mb"] >= result["jaxalign_ready_rss_mb"] > 100
    assert result["trl_peak_rss_mb"] >= result["trl_ready_rss_mb"] > 100
    # TRL pads chosen and rejected separately with the prompt in both: more positions than jaxalign's packed rows.
    assert result["trl_slots_per_step"] > result["jaxalign_tokens_per_step"]
