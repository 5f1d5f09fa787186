"""Load Hugging Face checkpoints into NNX models, straight onto their shardings.

``load_pretrained`` builds the model abstractly (``nnx.eval_shape``: shapes,
dtypes and logical axes, no memory), then reads one tensor at a time and
places it on its target sharding, so the host never holds the model twice.
Saving lives in ``jaxalign.models.hf_export``, random init in ``jaxalign.models.init``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import jax
from jax.sharding import Mesh

from jaxalign.models.config import ModelConfig
from jaxalign.models.hf_names import TensorMap, base_prefix, is_harmless_extra, tensor_maps
from jaxalign.models.init import Model, abstract_model, assemble, host_init, initial_adapter_values, model_class, resolve_lora
from jaxalign.models.lora import LoraConfig
from jaxalign.models.partition import place
from jaxalign.models.safetensors_io import SafetensorsFile


class CheckpointFiles:
    """The ``*.safetensors`` files of a checkpoint folder and which one holds each tensor."""

    def __init__(self, folder: Path):
        self.folder = folder
        index_path = folder / "model.safetensors.index.json"
        if index_path.exists():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            files = {}
            for filename in sorted(set(weight_map.values())):
                if not (folder / filename).exists():
                    raise FileNotFoundError(f"{index_path} lists {filename}, which does not exist")
                files[filename] = SafetensorsFile(folder / filename)
            self.files = list(files.values())
            self.location = {name: files[filename] for name, filename in weight_map.items()}
            for name, file in self.location.items():
                if name not in file.entries:
                    raise ValueError(f"{index_path} places tensor {name!r} in {file.path.name}, which does not contain it")
        else:
            paths = [folder / "model.safetensors"] if (folder / "model.safetensors").exists() else sorted(folder.glob("*.safetensors"))
            if not paths:
                raise FileNotFoundError(
                    f"{folder}: no model.safetensors or model.safetensors.index.json "
                    "(only safetensors checkpoints are supported; convert .bin files with transformers first)"
                )
            self.files = [SafetensorsFile(p) for p in paths]
            self.location = {name: f for f in self.files for name in f.entries}

    def __contains__(self, name: str) -> bool:
        return name in self.location

    def describe(self) -> str:
        return ", ".join(str(f.path) for f in self.files)


def read_hf_config(folder: Path) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: a Hugging Face checkpoint folder needs config.json")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path}: invalid JSON: {e}") from e


def _resolve_head(head: str, hf_config: Mapping[str, Any], files: CheckpointFiles) -> tuple[str, bool]:
    """(head, checkpoint_has_score): "auto" follows ``architectures`` (or a ``score.weight`` tensor)."""
    architectures = hf_config.get("architectures") or []
    is_classifier = any(a.endswith("ForSequenceClassification") for a in architectures) or (
        not architectures and "score.weight" in files
    )
    if head == "auto":
        head = "score" if is_classifier else "causal_lm"
    model_class(head)
    return head, is_classifier


def _detect_prefix(cfg: ModelConfig, files: CheckpointFiles) -> str:
    """``model.``/``transformer.``, or no prefix for checkpoints of the bare base model (e.g. the original gpt2)."""
    prefix = base_prefix(cfg)
    embed = "wte.weight" if cfg.family == "gpt2" else "embed_tokens.weight"
    if f"{prefix}{embed}" not in files and embed in files:
        return ""
    return prefix


def _check_tensors(maps: list[TensorMap], files: CheckpointFiles, cfg: ModelConfig, head: str, skip: set[str]) -> None:
    """Missing, unexpected and misshapen tensors, each named with its file."""
    expected = {m.hf_name: m for m in maps}
    missing = [name for name in expected if name not in files and name not in skip]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ValueError(
            f"missing tensor(s) {shown} in {files.describe()}: a {cfg.model_type} {head} model with this "
            f"{files.folder / 'config.json'} needs them"
        )
    droppable = {"score.weight"} if head == "causal_lm" else set()
    if head == "score" or cfg.tie_word_embeddings:
        droppable.add("lm_head.weight")  # the LM head of an SFT model, or a tied duplicate
    for name, file in files.location.items():
        if name not in expected and name not in droppable and not is_harmless_extra(name):
            raise ValueError(
                f"{file.path}: unexpected tensor {name!r}; it is not part of a {cfg.model_type} {head} model "
                f"as described by {files.folder / 'config.json'}"
            )
    for name, m in expected.items():
        if name in files and files.location[name].shape(name) != m.hf_shape:
            raise ValueError(
                f"{files.location[name].path}: tensor {name!r} has shape {files.location[name].shape(name)}, "
                f"expected {m.hf_shape} from {files.folder / 'config.json'}"
            )


def load_pretrained(
    path: str | os.PathLike,
    *,
    dtype: str | None = None,
    param_dtype: str | None = None,
    mesh: Mesh | None = None,
    rules: Mapping[str, Any] | None = None,
    remat: str | None = None,
    attention: str | None = None,
    head: str = "auto",
    seed: int = 0,
    lora: LoraConfig | None = None,
) -> Model:
    """Loads a Hugging Face checkpoint folder (config.json + safetensors) as a ``CausalLM`` or ``ScoreModel``.

    ``dtype``/``param_dtype``/``remat``/``attention`` override the config's defaults
    (float32/float32/"none"/"auto"). ``head="auto"`` follows ``architectures``;
    ``head="score"`` on a causal-LM checkpoint starts a reward/value model with
    a fresh score head (normal(initializer_range), seeded by ``seed``). ``lora``
    (the ``lora:`` section) adds LoRA adapters (``jaxalign.models.lora``): fresh ones
    seeded by ``seed``, or ``lora.init_from``'s PEFT folder. With
    ``mesh`` each parameter lands on ``logical_sharding(mesh, its axes, shape, rules)``;
    without, on the first device.
    """
    folder = Path(path)
    if not folder.is_dir():
        from jaxalign.hub import missing_folder_error

        raise missing_folder_error(path, "model")
    hf_config = read_hf_config(folder)
    overrides = {k: v for k, v in dict(dtype=dtype, param_dtype=param_dtype, remat=remat, attention=attention).items() if v is not None}
    try:
        cfg = ModelConfig.from_hf(hf_config, **overrides)
    except KeyError as e:
        raise ValueError(f"{folder / 'config.json'}: missing field {e}") from e
    except ValueError as e:
        raise ValueError(f"{folder / 'config.json'}: {e}") from e
    files = CheckpointFiles(folder)
    head, has_score = _resolve_head(head, hf_config, files)
    maps = tensor_maps(cfg, head, _detect_prefix(cfg, files))
    fresh_score = head == "score" and not has_score and "score.weight" not in files
    _check_tensors(maps, files, cfg, head, {"score.weight"} if fresh_score else set())

    graphdef, variables = abstract_model(cfg, head, resolve_lora(lora, cfg, head, str(path)))
    values: dict[tuple, jax.Array] = {}
    # Largest first: the transient host copies then coincide with the least
    # memory already on device, which keeps peak host memory near 1x the model.
    for m in sorted(maps, key=lambda m: math.prod(m.hf_shape), reverse=True):
        if fresh_score and m.hf_name == "score.weight":
            continue
        source = files.location[m.hf_name].read(m.hf_name)
        for param_path, part in zip(m.paths, m.to_params(source)):
            values[param_path] = place(part, variables[param_path], mesh, rules)
            # Transfers to accelerators are asynchronous and keep the host
            # buffer alive until done; waiting bounds host memory to one tensor.
            values[param_path].block_until_ready()
        del source, part  # free the host copy before reading the next tensor
    if fresh_score:
        path = ("score", "kernel")
        values[path] = place(host_init(variables[path], path, seed), variables[path], mesh, rules)
    if lora is not None:  # adapters, and the modules an init_from folder saved whole
        for path, value in initial_adapter_values(lora, variables, cfg, head, seed).items():
            values[path] = place(value, variables[path], mesh, rules)
    return assemble(graphdef, variables, values)
