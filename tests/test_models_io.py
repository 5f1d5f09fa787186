"""Hugging Face export/import: round trips, sharded files, bf16, fresh configs, and clear errors."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

from jaxalign.models import ModelConfig, init_model, load_pretrained, save_pretrained
from jaxalign.models.safetensors_io import SafetensorsFile, write_safetensors
from model_fixtures import VOCAB, make_causal_lm, padded_batch, torch_logits


@jax.jit
def _logits(model, ids, mask):
    return model(ids, mask)


def _our_logits(model, padding="right"):
    ids, mask = padded_batch(padding)
    return np.asarray(_logits(model, jnp.asarray(ids), jnp.asarray(mask))), ids, mask


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3_bias_tied"])
def test_save_and_reload_with_transformers(arch, tmp_path):
    original = make_causal_lm(arch, tmp_path / "hf")
    model = load_pretrained(tmp_path / "hf")
    save_pretrained(model, tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(reloaded) is type(original)

    ids, mask = padded_batch("right")
    expected = torch_logits(original, ids, mask)
    again = torch_logits(reloaded, ids, mask)
    real = mask.astype(bool)
    assert np.abs(again - expected)[real].max() < 1e-5
    ours, _, _ = _our_logits(model)
    assert np.abs(ours - again)[real].max() < 1e-4
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["architectures"] == [type(original).__name__]


def test_sharded_save_reloads(tmp_path):
    make_causal_lm("llama", tmp_path / "hf")
    model = load_pretrained(tmp_path / "hf")
    save_pretrained(model, tmp_path / "out", max_shard_size="20KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shard_files = sorted(set(index["weight_map"].values()))
    assert len(shard_files) > 3 and not (tmp_path / "out" / "model.safetensors").exists()
    for name in shard_files:  # the reference safetensors library reads our files
        with safe_open(tmp_path / "out" / name, framework="np") as f:
            assert set(f.keys()) == {k for k, v in index["weight_map"].items() if v == name}

    ours, ids, mask = _our_logits(model)
    real = mask.astype(bool)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert np.abs(torch_logits(hf, ids, mask) - ours)[real].max() < 1e-4
    np.testing.assert_array_equal(_our_logits(load_pretrained(tmp_path / "out"))[0], ours)

    save_pretrained(model, tmp_path / "out")  # re-export unsharded: stale shards are removed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gpt2"])
def test_models_built_from_config_export(model_type, tmp_path):
    """init_model -> save_pretrained -> transformers gives our logits (the config.json export is complete)."""
    hf_like = transformers.AutoConfig.for_model(
        model_type, vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, n_embd=32, n_layer=2, n_head=4, n_positions=32,
    ).to_dict()
    model = init_model(ModelConfig.from_hf(hf_like), seed=1)
    save_pretrained(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours, ids, mask = _our_logits(model)
    assert np.abs(torch_logits(hf, ids, mask) - ours)[mask.astype(bool)].max() < 1e-4


def test_bfloat16_checkpoint(tmp_path):
    original = make_causal_lm("llama", tmp_path / "f32")
    original.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert SafetensorsFile(tmp_path / "bf16" / "model.safetensors").dtype("model.norm.weight") == ml_dtypes.bfloat16
    ids, mask = padded_batch("left")
    real = mask.astype(bool)
    upcast = torch_logits(original.float(), ids, mask)  # the bf16 weights, in float32

    as_f32 = load_pretrained(tmp_path / "bf16", param_dtype="float32")
    assert as_f32.model.norm.scale[...].dtype == jnp.float32
    assert np.abs(_our_logits(as_f32, "left")[0] - upcast)[real].max() < 1e-4

    as_bf16 = load_pretrained(tmp_path / "bf16", dtype="bfloat16", param_dtype="bfloat16")
    assert as_bf16.model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    logits = _our_logits(as_bf16, "left")[0]
    assert logits.dtype == np.float32
    assert np.abs(logits - upcast)[real].max() < 0.05 * np.abs(upcast).max()

    save_pretrained(as_bf16, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert np.abs(torch_logits(hf, ids, mask) - upcast)[real].max() < 1e-4  # bf16 weights saved exactly


def test_gpt2_base_model_without_prefix_and_harmless_extras(tmp_path):
    """Checkpoints of GPT2Model (keys without ``transformer.``, with attn.bias buffers) load as a tied LM."""
    lm = make_causal_lm("gpt2", tmp_path / "lm")
    tensors = {}
    with safe_open(tmp_path / "lm" / "model.safetensors", framework="np") as f:
        for name in f.keys():
            tensors[name.removeprefix("transformer.")] = f.get_tensor(name)
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    tensors["lm_head.weight"] = tensors["wte.weight"]  # tied duplicate
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text((tmp_path / "lm" / "config.json").read_text())
    _write(tmp_path / "base" / "model.safetensors", tensors)
    ids, mask = padded_batch("right")
    ours = _our_logits(load_pretrained(tmp_path / "base"))[0]
    assert np.abs(ours - torch_logits(lm, ids, mask))[mask.astype(bool)].max() < 1e-4


def _write(path, tensors):
    items = [(name, value.shape, value.dtype) for name, value in tensors.items()]
    write_safetensors(path, items, lambda name: tensors[name])


def _rewrite(folder, edit):
    """Applies ``edit(dict of tensors)`` to folder/model.safetensors."""
    with safe_open(folder / "model.safetensors", framework="np") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    edit(tensors)
    _write(folder / "model.safetensors", tensors)


@pytest.fixture
def llama_folder(tmp_path):
    make_causal_lm("llama", tmp_path)
    return tmp_path


def test_error_missing_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        load_pretrained(tmp_path)


def test_error_no_weights(llama_folder):
    (llama_folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_pretrained(llama_folder)


def test_error_missing_tensor(llama_folder):
    _rewrite(llama_folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor\(s\) 'model\.layers\.1\.mlp\.up_proj\.weight' in .*model\.safetensors"):
        load_pretrained(llama_folder)


def test_error_unexpected_tensor(llama_folder):
    _rewrite(llama_folder, lambda t: t.update({"model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"model\.safetensors: unexpected tensor 'model\.layers\.0\.mlp\.extra\.weight'"):
        load_pretrained(llama_folder)


def test_harmless_extras_are_accepted(llama_folder):
    _rewrite(llama_folder, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)}))
    load_pretrained(llama_folder)


def test_error_shape_mismatch(llama_folder):
    config = json.loads((llama_folder / "config.json").read_text())
    config["intermediate_size"] = 80
    (llama_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \(64, 32\), expected \(80, 32\)"):
        load_pretrained(llama_folder)


def test_error_unsupported_model_type(llama_folder):
    config = json.loads((llama_folder / "config.json").read_text())
    config["model_type"] = "bert"
    (llama_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: unsupported model_type 'bert'; jaxalign supports: llama, mistral, qwen2, qwen3, gpt2"):
        load_pretrained(llama_folder)


def test_error_config_missing_field(llama_folder):
    config = json.loads((llama_folder / "config.json").read_text())
    del config["hidden_size"]
    (llama_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: missing field 'hidden_size'"):
        load_pretrained(llama_folder)


def test_error_index_names_missing_shard(llama_folder):
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (llama_folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match=r"index\.json lists model-00002-of-00002\.safetensors, which does not exist"):
        load_pretrained(llama_folder)


@pytest.mark.parametrize(
    "fields",
    [
        dict(model_type="llama", rope_theta=5e5, tie_word_embeddings=True, attention_bias=True, attention_out_bias=True,
             rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=8192)),
        dict(model_type="mistral", sliding_window=16, eos_token_id=(2, 3)),
        dict(model_type="qwen2", attention_bias=True, sliding_window=8,
             layer_types=("full_attention", "sliding_attention")),
        dict(model_type="qwen3", qk_norm=True, head_dim=32, pad_token_id=0),
        dict(model_type="gpt2", family="gpt2", activation="gelu_new", attention_bias=True, attention_out_bias=True,
             mlp_bias=True, tie_word_embeddings=True, max_position_embeddings=128),
    ],
)
def test_config_round_trip(fields):
    config = ModelConfig(vocab_size=100, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, **fields)
    hf = config.to_hf(["Whatever"])
    assert ModelConfig.from_hf(json.loads(json.dumps(hf))) == config
    reader = transformers.AutoConfig.for_model(**{k: v for k, v in hf.items() if k != "model_type"}, model_type=hf["model_type"])
    assert ModelConfig.from_hf(reader.to_dict()) == config  # transformers reads what we write


def test_error_unsupported_rope_type():
    config = dict(model_type="llama", vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                  num_attention_heads=2, rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="unsupported rope_type 'yarn'"):
        ModelConfig.from_hf(config)
