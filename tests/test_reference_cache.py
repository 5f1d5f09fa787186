"""Precomputed reference log-probs are reused only for the model, tokenizer and data they were made from."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from jaxalign.algos import common, dpo, reference_cache
from jaxalign.config import load_config
from jaxalign.data import build_pipeline
from jaxalign.sharding import MeshConfig, make_mesh
from tests.test_train_dpo_sft import one_device, tokenizer  # noqa: F401  (shared fixtures)
from tests.train_fixtures import tiny_run_config, write_config


def _rows(path, count, suffix=""):
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f" Good answer {i}{suffix}.",
                                        "rejected": f" Bad {i}."}) + "\n" for i in range(count)))
    return path


def _config(tmp_path, **data):
    data = {"train": str(_rows(tmp_path / "train.jsonl", 16)), "eval": None, **data}
    return load_config(write_config(tmp_path / "c.yaml", tiny_run_config(
        tmp_path / "run", algo="dpo", precompute_ref_logps=True, data=data)))


def _tables(cfg, tokenizer, mesh):
    params = common.split_params(common.build_model(cfg.model, cfg, mesh, head="causal_lm", tokenizer=tokenizer))
    return np.asarray(dpo.precomputed_reference(cfg, mesh, tokenizer, *params)["ref_train"])


def test_a_changed_model_seed_or_max_length_recomputes_and_says_why(tmp_path, tokenizer, one_device, capsys):
    cfg = _config(tmp_path)
    first = _tables(cfg, tokenizer, one_device)
    fingerprint = json.loads((tmp_path / "run" / "ref_logps_train.json").read_text())
    assert fingerprint["reference.seed"] == 0 and fingerprint["data.examples"].startswith("16 examples")

    np.testing.assert_array_equal(_tables(cfg, tokenizer, one_device), first)
    assert "reference log-probs for train: reusing" in capsys.readouterr().err

    reseeded = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, seed=1))
    other_model = _tables(reseeded, tokenizer, one_device)
    err = capsys.readouterr().err
    assert "recomputing" in err and "computed with a different reference.seed" in err
    assert not np.allclose(other_model, first)

    shorter = dataclasses.replace(reseeded, data=dataclasses.replace(reseeded.data, max_length=12, max_prompt_length=4))
    _tables(shorter, tokenizer, one_device)
    assert "different data.max_length, data.max_prompt_length" in capsys.readouterr().err


def test_fingerprint_covers_tokenizer_data_and_model_files(tmp_path, tokenizer):
    cfg = _config(tmp_path)
    pipeline = build_pipeline(cfg.data, tokenizer, split="train", kind="preference")
    base = reference_cache.fingerprint(cfg, tokenizer, pipeline, "train")

    def changed(other_cfg=cfg, other_tokenizer=tokenizer, other_pipeline=pipeline, split="train"):
        other = reference_cache.fingerprint(other_cfg, other_tokenizer, other_pipeline, split)
        return sorted(key for key in base if base[key] != other.get(key))

    assert changed() == []
    assert changed(other_tokenizer=_with_template(tokenizer)) == ["tokenizer"]
    edited = dataclasses.replace(cfg.data, train=str(_rows(tmp_path / "edited.jsonl", 16, suffix="!")))
    assert changed(other_pipeline=build_pipeline(edited, tokenizer, split="train", kind="preference")) == ["data.examples"]
    assert changed(split="eval") == ["data.split"]
    assert changed(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, packing=False))) == [
        "data.pack_length", "data.packing"]

    from jaxalign.models import save_pretrained

    folder = tmp_path / "ref"
    model = common.build_model(cfg.model, cfg, make_mesh(MeshConfig(data=1), devices=jax.devices()[:1]),
                               head="causal_lm", tokenizer=tokenizer)
    save_pretrained(model, str(folder))
    from_folder = dataclasses.replace(cfg, ref_model=dataclasses.replace(cfg.model, path=str(folder), config=None))
    before = reference_cache.fingerprint(from_folder, tokenizer, pipeline, "train")
    weights = next(folder.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # re-written weights
    after = reference_cache.fingerprint(from_folder, tokenizer, pipeline, "train")
    assert sorted(k for k in before if before[k] != after[k]) == ["reference.files"]


def _with_template(tokenizer):
    import copy

    other = copy.deepcopy(tokenizer)
    other.chat_template = "{{ messages }}"
    return other


def test_a_table_without_fingerprint_or_a_half_written_one_is_not_trusted(tmp_path):
    path = tmp_path / "ref_logps_train.npy"
    np.save(path, np.zeros((4, 2), np.float32))
    table, why = reference_cache.load(path, {"a": 1}, 4)
    assert table is None and "has no fingerprint" in why
    reference_cache.save(path, np.ones((4, 2), np.float32), {"a": 1})
    table, why = reference_cache.load(path, {"a": 1}, 4)
    assert why == "" and table.sum() == 8
    assert reference_cache.load(path, {"a": 2}, 4)[1] == "it was computed with a different a"
    assert "shape" in reference_cache.load(path, {"a": 1}, 5)[1]
