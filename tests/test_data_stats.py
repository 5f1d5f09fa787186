"""jaxalign data stats: the numbers against hand counts, the planted adversarial annotator
named, Cohen's kappa against its formula, files written, and bad feedback data at the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxalign.data.stats import dataset_stats
from jaxalign.data.stats_annotators import cohen_kappa
from tests.test_bad_input import _jsonl, _main, assert_one_line


def test_cohen_kappa_by_hand():
    # 10 items: observed agreement 0.7; marginals a: 6 yes, b: 5 yes -> expected 0.5; kappa 0.4.
    a = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    b = [1, 1, 1, 1, 0, 0, 1, 0, 0, 0]
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([1, 2, 3], [1, 2, 3], quadratic=True) == pytest.approx(1.0)


def test_stats_by_hand(tmp_path):
    rows = [
        {"prompt": "P1", "chosen": " long reply", "rejected": " no", "annotator": "a", "chosen_first": True},
        {"prompt": "P1", "chosen": " no", "rejected": " long reply", "annotator": "b", "chosen_first": False},
        {"prompt": "P1", "chosen": " long reply", "rejected": " no", "annotator": "c", "chosen_first": True},
        {"prompt": "P2", "chosen": " Yes!", "rejected": " never mind", "annotator": "a", "chosen_first": True},
        {"prompt": "P2", "chosen": " yes", "rejected": " never mind", "annotator": "a", "chosen_first": True},
        {"prompt": "P2", "chosen": " Yes!", "rejected": " never mind", "annotator": "a", "chosen_first": False},
    ]
    stats = dataset_stats(_jsonl(tmp_path / "d.jsonl", rows))
    assert stats["counts"]["pairs"] == 6 and stats["counts"]["prompts"] == 2 and stats["counts"]["annotators"] == 3
    assert stats["length_bias"]["chosen_longer"] == pytest.approx(2 / 6)
    assert stats["position_bias"]["chosen_first"] == pytest.approx(4 / 6)
    assert stats["duplicates"]["exact"] == 1 and stats["duplicates"]["near"] == 1
    assert stats["contradictions"]["items"] == 1 and stats["contradictions"]["of_items"] == 3
    agreement = stats["annotators"]["agreement"]
    assert agreement["b"]["agreement"] == 0.0 and agreement["a"]["agreement"] == 1.0


def test_data_stats_names_the_planted_adversary(tmp_path, capsys):
    code, err = _main(capsys, "data", "stats", "builtin:annotated_adversary", "--out", str(tmp_path / "out"))
    assert code == 0 and "jaxalign: annotator eve: low agreement with the majority" in err
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    kappas = {name: row["kappa"] for name, row in stats["annotators"]["agreement"].items()}
    # Measured: eve 0.19; the careful ana, ben, cai 0.86-0.92.
    assert min(kappas, key=kappas.get) == "eve" and kappas["eve"] < 0.4
    assert all(kappas[name] > 0.7 for name in ("ana", "ben", "cai"))
    assert any(flag["annotator"] == "dev" and "length bias" in flag["why"] for flag in stats["annotators"]["flagged"])
    assert stats["annotators"]["krippendorff_alpha"] is not None and stats["annotators"]["kappa_pairwise"]
    markdown = (tmp_path / "out" / "stats.md").read_text()
    assert "**annotator eve:**" in markdown and "Krippendorff's alpha (nominal)" in markdown


def test_rating_stats_report_calibration(tmp_path):
    rows = [{"prompt": f"P{i}", "completion": f" r{j}", "rating": min(5, base + shift), "annotator": who}
            for i in range(6) for j, base in enumerate((1, 2, 3, 4)) for who, shift in (("a", 0), ("b", 0), ("c", 1))]
    stats = dataset_stats(_jsonl(tmp_path / "r.jsonl", rows), rating_scale=[1, 5])
    calibration = stats["annotators"]["calibration"]
    assert calibration["c"]["offset"] == pytest.approx(1.0) and calibration["a"]["offset"] == pytest.approx(-0.5)
    assert stats["ratings"]["by_annotator"]["c"]["histogram"] == {"2": 6, "3": 6, "4": 6, "5": 6}
    assert any(f["annotator"] == "c" and "miscalibrated" in f["why"] for f in stats["annotators"]["flagged"])


# ---------------------------------------------------------------- bad feedback data, through the CLI


@pytest.fixture
def train(tmp_path, capsys):
    from tests.train_fixtures import tiny_run_config, write_config

    def run(rows, *overrides, algo="rm", loss="bradley_terry"):
        path = _jsonl(tmp_path / "d.jsonl", rows)
        config = tiny_run_config(tmp_path / "run", algo=algo, loss={"name": loss},
                                 data={"train": path, "eval": None, "batch_size": 2})
        return _main(capsys, "train", str(write_config(tmp_path / "c.yaml", config)), *overrides)
    return run


PAIR = {"prompt": "Q?", "chosen": " yes", "rejected": " no"}


@pytest.mark.parametrize("weight, detail", [(-1.0, "a weight must be >= 0, got -1"),
                                            (float("nan"), "expected a weight, got nan"),
                                            ("heavy", "expected a weight, got str")])
def test_bad_weights(train, weight, detail):
    rows = [dict(PAIR, w=1.0)] * 3 + [dict(PAIR, w=weight)]
    assert_one_line(*train(rows, "--set", "data.weight_column=w"), 1, "d.jsonl:4: field 'w':", detail)


def test_rating_outside_the_declared_scale(train):
    rows = [{"prompt": "Q?", "completion": " a", "rating": r} for r in (1, 3, 5, 7)]
    assert_one_line(*train(rows, "--set", "data.rating_scale=[1, 5]", loss="ordinal"), 1,
                    "d.jsonl:4: field 'rating': rating 7 is outside the declared data.rating_scale [1, 5]")


def test_ordinal_without_a_declared_scale(train):
    rows = [{"prompt": "Q?", "completion": " a", "rating": r} for r in (1, 3, 5, 2)]
    assert_one_line(*train(rows, loss="ordinal"), 2, "declare the scale as data.rating_scale")


def test_one_annotator_only(train):
    rows = [dict(PAIR, annotator="alice")] * 4
    assert_one_line(*train(rows, "--set", "data.annotators.weight_by=agreement"), 1,
                    "column 'annotator' names one annotator only ('alice')")


def test_strength_with_a_loss_that_ignores_it(train):
    rows = [dict(PAIR, p=0.8)] * 4
    assert_one_line(*train(rows, "--set", "data.strength_column=p", "--set", "loss.name=hinge", algo="dpo", loss="hinge"),
                    2, "data.strength_column 'p'", "which loss 'hinge' ignores")


def test_data_stats_warns_about_one_annotator_and_fails_on_a_missing_file(tmp_path, capsys):
    path = _jsonl(tmp_path / "one.jsonl", [dict(PAIR, annotator="alice")] * 3)
    code, err = _main(capsys, "data", "stats", path, "--out", str(tmp_path / "o"))
    assert code == 0 and "names one annotator only ('alice')" in err
    assert_one_line(*_main(capsys, "data", "stats", str(tmp_path / "missing.jsonl")), 1, "file not found")
