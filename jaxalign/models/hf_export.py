"""Export NNX models as Hugging Face checkpoint folders (config.json + safetensors).

Tensors are gathered to the host one at a time (across processes with
``process_allgather``) and streamed into the file, so a sharded model is never
assembled whole on one host. Only process 0 writes; every process must call
``save_pretrained`` because the gathers are collective.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from jaxalign.models.heads import ScoreModel
from jaxalign.models.hf_names import TensorMap, architecture, tensor_maps
from jaxalign.models.safetensors_io import parse_size, write_safetensors
from jaxalign.models.transformer import CausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def to_host(array: jax.Array) -> np.ndarray:
    if array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def _plan_shards(maps: list[TensorMap], itemsize: int, max_bytes: int) -> list[list[TensorMap]]:
    """Greedy split of ``maps`` (in order) into files of at most ``max_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[TensorMap]] = [[]]
    size = 0
    for m in maps:
        nbytes = int(np.prod(m.hf_shape)) * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(m)
        size += nbytes
    return shards


def _remove_stale_weights(folder: Path) -> None:
    """transformers prefers model.safetensors over an index, and loads a PEFT adapter it
    finds next to config.json, so drop earlier exports (a model, an adapter) first."""
    for old in folder.glob("model*.safetensors"):
        old.unlink()
    for old in (INDEX_FILE, "adapter_config.json", "adapter_model.safetensors"):
        (folder / old).unlink(missing_ok=True)


def hf_config_for(model: CausalLM | ScoreModel, dtype_name: str) -> dict[str, Any]:
    """config.json contents for ``model`` saved in ``dtype_name``."""
    head = "score" if isinstance(model, ScoreModel) else "causal_lm"
    config = model.config.to_hf([architecture(model.config, head)])
    config.update(torch_dtype=dtype_name, dtype=dtype_name)
    if head == "score":
        config.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return config


def save_pretrained(
    model: CausalLM | ScoreModel,
    path: str | os.PathLike,
    *,
    max_shard_size: int | str = "2GB",
    dtype: str | None = None,
    transform: Callable[[tuple, jax.Array], jax.Array] | None = None,
) -> None:
    """Writes ``model`` to ``path`` so ``transformers.AutoModelFor{CausalLM,SequenceClassification}`` loads it.

    One ``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` shards
    plus ``model.safetensors.index.json`` past ``max_shard_size`` ("2GB",
    "500MB", or bytes). ``dtype`` (default: the parameter dtype) sets the saved
    precision and ``torch_dtype``. ``transform(param_path, value)`` changes a parameter on its
    way out, one at a time (``jaxalign.models.lora.merged_kernels`` folds adapters in).
    """
    cfg = model.config
    head = "score" if isinstance(model, ScoreModel) else "causal_lm"
    dtype_name = dtype or cfg.param_dtype
    save_dtype = np.dtype(jnp.dtype(dtype_name))
    maps = tensor_maps(cfg, head)
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    by_name = {m.hf_name: m for m in maps}

    def produce(name: str) -> np.ndarray:
        m = by_name[name]
        values = (params[p].get_value() for p in m.paths)
        if transform is not None:
            values = (transform(p, value) for p, value in zip(m.paths, values))
        return m.to_hf(*(to_host(value) for value in values))

    folder = Path(path)
    writer = jax.process_index() == 0
    if writer:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_weights(folder)
        (folder / "config.json").write_text(json.dumps(hf_config_for(model, dtype_name), indent=2) + "\n")
    shards = _plan_shards(maps, save_dtype.itemsize, parse_size(max_shard_size))
    names = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]
    total = 0
    for filename, shard in zip(names, shards):
        entries = [(m.hf_name, m.hf_shape, save_dtype) for m in shard]
        if writer:
            total += write_safetensors(folder / filename, entries, produce, {"format": "pt"})
        else:
            for m in shard:  # join the collective gathers; process 0 writes
                produce(m.hf_name)
    if writer and len(shards) > 1:
        weight_map = {m.hf_name: filename for filename, shard in zip(names, shards) for m in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"jaxalign.save_pretrained:{folder}")
