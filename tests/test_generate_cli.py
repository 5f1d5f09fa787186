"""``jaxalign generate`` end to end on a tiny saved model with the built-in tokenizer."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxalign import cli
from jaxalign.data import load_tokenizer
from jaxalign.generation import SamplingConfig, generate, sampler
from jaxalign.generation.continuous import sample_continuously
from jaxalign.models import ModelConfig, init_model, save_pretrained

NEW = 8
PROMPTS = [
    "The quick brown fox",
    [{"role": "user", "content": "What is two plus two?"}],
    "A",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Name a colour"}],
    "Once upon a time there was a",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("builtin")  # 1024 tokens, BOS 1, EOS 2, pad 0, a chat template


def tiny_model(tokenizer):
    cfg = ModelConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        max_position_embeddings=128, initializer_range=0.1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return init_model(cfg, seed=0)


def test_generate_cli_end_to_end(tmp_path, tokenizer, capsys, monkeypatch):
    model = tiny_model(tokenizer)
    # Greedy continuation of the first prompt through the library; then make one of its
    # tokens an EOS of the saved model, so that this row must stop there.
    prompt_ids = np.asarray([tokenizer(PROMPTS[0])["input_ids"]])
    greedy = SamplingConfig(NEW, temperature=0.0, stop_at_eos=False)
    expected = np.asarray(generate(model, prompt_ids, np.ones_like(prompt_ids), jax.random.key(0), greedy).tokens[0])
    stop_at = next(i for i in range(1, NEW) if expected[i] not in expected[:i] and expected[i] > 2)
    model.config = model.config.replace(eos_token_id=(2, int(expected[stop_at])))
    save_pretrained(model, tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(tmp_path / "model"), "--prompts", str(prompts), "--out", str(out),
            "--max-new-tokens", str(NEW), "--temperature", "0", "--batch-size", "2"]
    assert cli.main(args) == 0
    assert f"{len(PROMPTS)} completions" in capsys.readouterr().err

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["prompt"] for row in rows] == PROMPTS  # input order, original prompt values
    first = rows[0]
    assert first == {
        "prompt": PROMPTS[0],
        "completion": tokenizer.decode(expected[:stop_at + 1].tolist(), skip_special_tokens=True),
        "num_tokens": stop_at + 1,
        "finish_reason": "stop",
    }
    for row in rows:
        assert 1 <= row["num_tokens"] <= NEW
        assert (row["finish_reason"] == "length") == (row["num_tokens"] == NEW)

    # Continuous batching: the prompts four times over, 20 rows through 8 slots (one per fake
    # device; fewer rows than slots would take the static path), give the same replies.
    repeated = tmp_path / "repeated.jsonl"
    repeated.write_text(prompts.read_text() * 4)
    continuous = tmp_path / "continuous.jsonl"
    calls = []
    monkeypatch.setattr(sampler, "sample_continuously",
                        lambda *a, **k: calls.append(k["num_samples"]) or sample_continuously(*a, **k))
    assert cli.main(["generate", "--model", str(tmp_path / "model"), "--prompts", str(repeated), "--out",
                     str(continuous), "--max-new-tokens", str(NEW), "--temperature", "0", "--batch-size", "20",
                     "--slots", "8"]) == 0
    assert calls == [1]  # the continuous path ran, once for the one batch of 20
    assert continuous.read_text() == out.read_text() * 4
    capsys.readouterr()
    assert cli.main(args + ["--slots", "0"]) == 1
    assert "--slots and --batch-size must be >= 1, got 0 and 2" in capsys.readouterr().err
    assert out.read_text() * 4 == continuous.read_text()  # the refused run left the earlier output alone


def test_generate_cli_reports_bad_rows(tmp_path, tokenizer, capsys):
    folder = tmp_path / "model"
    save_pretrained(tiny_model(tokenizer), folder)
    tokenizer.save_pretrained(folder)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": \n')
    assert cli.main(["generate", "--model", str(folder), "--prompts", str(prompts), "--max-new-tokens", "4"]) == 1
    assert f"{prompts}:2" in capsys.readouterr().err
