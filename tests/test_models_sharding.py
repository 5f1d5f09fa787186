"""Loading onto a (data=1, fsdp=2, tensor=4) mesh of 8 fake CPU devices: right shardings, same logits."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxalign.models import ModelConfig, init_model, load_pretrained, save_pretrained
from jaxalign.models.partition import logical_axes, state_shardings
from jaxalign.sharding import DEFAULT_RULES, MeshConfig, logical_to_spec, make_mesh
from model_fixtures import make_causal_lm, padded_batch


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8
    return make_mesh(MeshConfig(data=1, fsdp=2, tensor=4))


def _assert_shardings_follow_logical_axes(model, mesh):
    specs = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = variable.get_value()
        expected = logical_to_spec(logical_axes(variable), value.shape, mesh, DEFAULT_RULES)
        assert value.sharding == NamedSharding(mesh, expected), path
        specs[path] = expected
    return specs


@jax.jit
def _logits(model, ids, mask):
    return model(ids, mask)


def test_sharded_load_matches_single_device(mesh, tmp_path):
    make_causal_lm("llama", tmp_path / "hf")  # 4 heads, 2 kv heads, vocab 128, mlp 64
    single = load_pretrained(tmp_path / "hf")
    sharded = load_pretrained(tmp_path / "hf", mesh=mesh)

    specs = _assert_shardings_follow_logical_axes(sharded, mesh)
    attn = ("model", "layers", 0, "self_attn")
    assert specs[attn + ("q_proj", "kernel")] == PartitionSpec("fsdp", "tensor", None)
    assert specs[attn + ("k_proj", "kernel")] == PartitionSpec("fsdp", None, None)  # 2 kv heads: tensor=4 does not divide
    assert specs[("lm_head", "kernel")] == PartitionSpec("fsdp", "tensor")
    assert specs[("model", "layers", 1, "mlp", "down_proj", "kernel")] == PartitionSpec("tensor", "fsdp")
    q_kernel = sharded.model.layers[0].self_attn.q_proj.kernel[...]
    assert q_kernel.addressable_shards[0].data.shape == (16, 1, 8)

    ids, mask = padded_batch("left", batch=4)
    real = mask.astype(bool)
    expected = np.asarray(_logits(single, ids, mask))
    got = np.asarray(_logits(sharded, ids, mask))
    assert np.abs(got - expected)[real].max() < 1e-5

    save_pretrained(sharded, tmp_path / "out")  # gathers tensor by tensor
    np.testing.assert_allclose(np.asarray(_logits(load_pretrained(tmp_path / "out"), ids, mask))[real], expected[real], atol=1e-6)


def test_init_model_on_mesh(mesh):
    cfg = ModelConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=4)
    for head in ("causal_lm", "score"):
        model = init_model(cfg, head=head, mesh=mesh, seed=2)
        _assert_shardings_follow_logical_axes(model, mesh)
        single = init_model(cfg, head=head, seed=2)
        for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model)), nnx.to_flat_state(nnx.state(single))):
            np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path))

    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh)  # usable as jit in/out shardings for the train step
    assert jax.tree.structure(shardings) == jax.tree.structure(state)
    assert shardings["score"]["kernel"].get_value().spec == PartitionSpec("fsdp", None)
