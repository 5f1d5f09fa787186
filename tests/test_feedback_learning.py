"""Reward models on human feedback learn, end to end: an ordinal head on ratings exports a
folder transformers loads; a planted adversarial annotator costs held-out accuracy and
agreement weighting wins most of it back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.learning_margins import LearningCase
from tests.train_fixtures import read_metrics, tiny_run_config


def _train(config: dict) -> None:
    from jaxalign.config import TrainConfig
    from jaxalign.configlib import from_dict
    from jaxalign.trainer import train

    train(from_dict(TrainConfig, config))


def test_ordinal_reward_model_trains_and_exports_thresholds(tmp_path):
    from transformers import AutoModelForSequenceClassification

    config = tiny_run_config(tmp_path / "run", loss={"name": "ordinal"}, max_steps=2, eval_batches=1,
                             checkpoint={"every_steps": 1000, "keep": 0, "every_minutes": 0},
                             data={"train": "builtin:ratings", "eval": "builtin:ratings#eval", "rating_scale": [1, 5],
                                   "rating_normalization": "per_annotator"})
    _train(config)
    export = tmp_path / "run" / "export"
    extras = json.loads((export / "config.json").read_text())["jaxalign"]
    thresholds = extras["ordinal_thresholds"]
    assert extras["loss"] == "ordinal" and extras["rating_scale"] == [1.0, 5.0] and len(thresholds) == 4
    assert thresholds == sorted(thresholds)
    model = AutoModelForSequenceClassification.from_pretrained(export)
    assert model.config.num_labels == 1 and model.config.jaxalign["ordinal_thresholds"] == thresholds
    last_eval = read_metrics(tmp_path / "run", prefix="eval/")[2]
    assert {"eval/accuracy", "eval/mae", "eval/loss"} <= set(last_eval)


# ---------------------------------------------------------------- the planted adversarial annotator

STEPS = 60


def _annotator_config(run_dir: Path, seed: int, condition: str) -> dict:
    data = {"train": "builtin:annotated_adversary", "eval": "builtin:annotated_adversary#eval", "batch_size": 16,
            "seed": seed}
    if condition == "clean":  # the same rows without eve's: what she took away is measured against this
        from jaxalign.data import builtin

        path = run_dir.parent / "without_eve.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in builtin.rows("annotated_adversary")
                                if row["annotator"] != "eve"))
        data.update(train=str(path), num_epochs=3)
    if condition == "weighted":
        data["annotators"] = {"weight_by": "agreement"}
    config = tiny_run_config(run_dir, data=data, max_steps=STEPS, eval_batches=0, seed=seed,
                             checkpoint={"every_steps": 1000, "keep": 0, "every_minutes": 0}, log={"every_steps": 20})
    config["optim"] = {"lr": 1e-3, "warmup_steps": 5}
    return config


def _held_out_accuracy(run_dir: Path) -> dict[str, float]:
    evals = read_metrics(run_dir, prefix="eval/")
    return {"accuracy": evals[max(evals)]["eval/accuracy"]}


ANNOTATOR_CASE_ADVERSARY = LearningCase(lambda d, s: _annotator_config(d, s, "adversary"), _held_out_accuracy)
ANNOTATOR_CASE_WEIGHTED = LearningCase(lambda d, s: _annotator_config(d, s, "weighted"), _held_out_accuracy)
ANNOTATOR_CASE_CLEAN = LearningCase(lambda d, s: _annotator_config(d, s, "clean"), _held_out_accuracy)


@pytest.mark.slow
def test_agreement_weights_win_back_most_of_what_an_adversarial_annotator_took(tmp_path):
    # Measured over seeds 0 / 1 / 2 (docs/feedback.md): adversary 0.484 / 0.565 / 0.524, weighted
    # 0.823 / 0.790 / 0.847, clean 0.855 / 0.847 / 0.871: taken 0.28-0.37, recovered 80-93%.
    accuracy = {}
    for name, case in (("adversary", ANNOTATOR_CASE_ADVERSARY), ("weighted", ANNOTATOR_CASE_WEIGHTED),
                       ("clean", ANNOTATOR_CASE_CLEAN)):
        run_dir = tmp_path / name / "run"
        _train(case.config(run_dir, 0))
        accuracy[name] = case.summary(run_dir)["accuracy"]
    taken = accuracy["clean"] - accuracy["adversary"]
    recovered = (accuracy["weighted"] - accuracy["adversary"]) / taken
    assert accuracy["adversary"] < 0.6 and taken > 0.2, accuracy
    assert recovered > 0.5, (accuracy, recovered)
