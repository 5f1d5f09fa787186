"""LoRA adapters as PEFT folders: written at export, read as a starting point (``lora.init_from``).

A PEFT LoRA folder is ``adapter_config.json`` plus ``adapter_model.safetensors``
whose tensors are named after the Hugging Face module they adapt:
``base_model.model.<module>.lora_A.weight`` ``[rank, in]`` and
``...lora_B.weight`` ``[out, rank]`` (``<module>`` e.g.
``model.layers.0.self_attn.q_proj``), and ``base_model.model.<module>.weight``
for a module trained fully (``modules_to_save``, e.g. a reward model's
``score``). ``peft.PeftModel.from_pretrained(base, folder)`` loads it onto the
base model. Our adapters are ``lora_a`` ``[*in, rank]`` and ``lora_b``
``[rank, *out]`` (``jaxalign.models.lora``), so the conversion is a transpose
and a reshape; module names come from the checkpoint tensor maps
(``jaxalign.models.hf_names``).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import nnx

from jaxalign.models.config import ModelConfig
from jaxalign.models.hf_names import TensorMap, tensor_maps
from jaxalign.models.lora import AdapterSpec, LoraConfig, adapted_modules, select_modules
from jaxalign.models.safetensors_io import SafetensorsFile, write_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
TASK_TYPES = {"causal_lm": "CAUSAL_LM", "score": "SEQ_CLS"}
_LORA_TENSOR = re.compile(r"(?P<module>.+)\.lora_(?P<which>[AB])\.weight")

Path_ = tuple  # a parameter path: ("model", "layers", 0, "self_attn", "q_proj", "kernel")


def head_of(model: nnx.Module) -> str:
    from jaxalign.models.heads import ScoreModel

    return "score" if isinstance(model, ScoreModel) else "causal_lm"


def module_names(cfg: ModelConfig, head: str) -> dict[tuple, str]:
    """``{our module path: Hugging Face module name}`` of every linear map stored as one tensor
    (GPT-2's fused ``c_attn`` holds three of ours and has no entry)."""
    names = {}
    for m in tensor_maps(cfg, head):
        if len(m.paths) == 1 and m.paths[0][-1] == "kernel" and m.hf_name.endswith(".weight"):
            names[tuple(m.paths[0][:-1])] = m.hf_name[: -len(".weight")]
    return names


def _joined(path: tuple) -> str:
    return "/".join(str(key) for key in path)


# ---------------------------------------------------------------- writing


def save_adapter(model: nnx.Module, path: str | os.PathLike, spec: AdapterSpec, trained: set[str],
                 base_name: str | None, to_host: Callable[[jax.Array], np.ndarray]) -> None:
    """Writes ``model``'s adapters as a PEFT LoRA folder at ``path``. ``trained`` lists the
    paths of every trained parameter (``a/b/c``): the non-adapter ones go in whole
    (``modules_to_save``). Collective like ``save_pretrained``: every process calls it,
    process 0 writes."""
    cfg, head = model.config, head_of(model)
    names = module_names(cfg, head)
    adapted = {tuple(int(k) if k.isdigit() else k for k in p.split("/")): m for p, m in adapted_modules(model).items()}
    fused = [_joined(p) for p in adapted if p not in names]
    if fused:
        raise ValueError(f"lora.export: {cfg.model_type} stores {', '.join(sorted({p.rsplit('/', 1)[-1] for p in fused}))} "
                         "fused in one tensor (c_attn), which a PEFT adapter cannot hold as separate adapters; "
                         "set lora.export: merged, or leave them out of lora.target_modules")
    # name -> (shape, dtype, produce): the header (shapes) precedes the data, produced one at a time
    tensors: dict[str, tuple[tuple, np.dtype, Callable[[], np.ndarray]]] = {}
    for module_path, module in sorted(adapted.items(), key=lambda item: names[item[0]]):
        prefix = f"{PEFT_PREFIX}{names[module_path]}"
        a, b = module.lora_a.get_value(), module.lora_b.get_value()
        rank = a.shape[-1]
        tensors[f"{prefix}.lora_A.weight"] = ((rank, a.size // rank), np.dtype(a.dtype),
                                              lambda a=a, rank=rank: to_host(a).reshape(-1, rank).T)
        tensors[f"{prefix}.lora_B.weight"] = ((b.size // rank, rank), np.dtype(b.dtype),
                                              lambda b=b, rank=rank: to_host(b).reshape(rank, -1).T)
    params = {tuple(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    saved_modules = []
    for m in _whole_modules(cfg, head, {p for p in trained if not p.rsplit("/", 1)[-1].startswith("lora_")}):
        saved_modules.append(m.hf_name.rsplit(".", 1)[0])
        tensors[PEFT_PREFIX + m.hf_name] = (m.hf_shape, np.dtype(params[m.paths[0]].dtype),
                                            lambda m=m: m.to_hf(*(to_host(params[p]) for p in m.paths)))
    folder = Path(path)
    writer = jax.process_index() == 0
    entries = [(name, shape, dtype) for name, (shape, dtype, _) in tensors.items()]
    if writer:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.glob("model*.safetensors"), folder / "model.safetensors.index.json", folder / "config.json"]:
            stale.unlink(missing_ok=True)  # a full model left here would be loaded instead of base + adapter
        config = adapter_config(spec, head, cfg, sorted({names[p] for p in adapted}),
                                sorted(set(saved_modules)) or None, base_name)
        (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        write_safetensors(folder / ADAPTER_WEIGHTS, entries, lambda name: tensors[name][2](), {"format": "pt"})
    else:
        for _, _, produce in tensors.values():  # join the collective gathers; process 0 writes
            produce()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"jaxalign.save_adapter:{folder}")


def _whole_modules(cfg: ModelConfig, head: str, trained: set[str]) -> list[TensorMap]:
    """The tensor maps of every Hugging Face module that holds a trained base parameter."""
    maps = tensor_maps(cfg, head)
    modules = {m.hf_name.rsplit(".", 1)[0] for m in maps if any(_joined(p) in trained for p in m.paths)}
    return [m for m in maps if m.hf_name.rsplit(".", 1)[0] in modules]


def adapter_config(spec: AdapterSpec, head: str, cfg: ModelConfig, targets: list[str],
                   modules_to_save: list[str] | None, base_name: str | None) -> dict[str, Any]:
    """``adapter_config.json`` as PEFT's ``LoraConfig`` reads it."""
    alpha = int(spec.alpha) if float(spec.alpha).is_integer() else spec.alpha
    return {
        "peft_type": "LORA", "task_type": TASK_TYPES[head], "base_model_name_or_path": base_name,
        "r": spec.rank, "lora_alpha": alpha, "lora_dropout": spec.dropout, "use_rslora": spec.rslora,
        "target_modules": targets, "modules_to_save": modules_to_save,
        "fan_in_fan_out": cfg.family == "gpt2",  # GPT-2's Conv1D stores [in, out]
        "bias": "none", "use_dora": False, "init_lora_weights": True, "inference_mode": True,
        "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "layers_pattern": None,
        "revision": None,
    }


# ---------------------------------------------------------------- reading


class AdapterFolder:
    """A PEFT LoRA folder's config and tensors (headers only until read)."""

    def __init__(self, path: str | os.PathLike):
        from jaxalign.hub import missing_folder_error

        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise missing_folder_error(path, "lora.init_from")
        config_path = self.path / ADAPTER_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"lora.init_from: {config_path} not found: a PEFT LoRA folder holds "
                                    f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
        try:
            self.config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"lora.init_from: {config_path}: invalid JSON: {err}") from None
        self.config_path = config_path
        kind = self.config.get("peft_type")
        if kind != "LORA":
            raise ValueError(f"lora.init_from: {config_path} has peft_type {kind!r}; only LoRA adapters (LORA) load")
        for key, unsupported in (("use_dora", True), ("rank_pattern", None), ("alpha_pattern", None)):
            value = self.config.get(key)
            if (value is True if unsupported else bool(value)):
                raise ValueError(f"lora.init_from: {config_path} sets {key}: {value!r}, which jaxalign's LoRA "
                                 "does not support (one rank and alpha for every module, no DoRA)")
        weights = self.path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"lora.init_from: {weights} not found (only safetensors adapters load; "
                                    "re-save a .bin adapter with PEFT's save_pretrained(safe_serialization=True))")
        self.weights = SafetensorsFile(weights)

    @property
    def base(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def lora_modules(self) -> dict[str, dict[str, str]]:
        """``{hf module name: {"A": tensor name, "B": tensor name}}``."""
        modules: dict[str, dict[str, str]] = {}
        for name in self.weights.keys():
            found = _LORA_TENSOR.fullmatch(name.removeprefix(PEFT_PREFIX))
            if found:
                modules.setdefault(found["module"], {})[found["which"]] = name
        return modules

    def whole_tensors(self) -> list[str]:
        """Tensors of fully trained modules (``modules_to_save``), as Hugging Face names."""
        return [name.removeprefix(PEFT_PREFIX) for name in self.weights.keys()
                if not _LORA_TENSOR.fullmatch(name.removeprefix(PEFT_PREFIX))]


def check_base(folder: AdapterFolder, model_path: str | None) -> None:
    """The adapter's base (``base_model_name_or_path``) is the configured ``model.path``: the
    same string, the same local folder, or a hub id whose name is the folder's name."""
    base = folder.base
    if base is None:  # written without a known base (e.g. a model built from model.config)
        return
    hint = (f"point model.path at that model's folder, or, if {model_path} is the same model, set "
            f"base_model_name_or_path in {folder.config_path} to it")
    if model_path is None:
        raise ValueError(f"lora.init_from: {folder.path} was trained on base model '{base}', but the model is built "
                         f"from model.config; {hint}")
    if _same_model(str(base), str(model_path)):
        return
    raise ValueError(f"lora.init_from: {folder.path} was trained on base model '{base}' "
                     f"(base_model_name_or_path in {ADAPTER_CONFIG}), but model.path is '{model_path}'; {hint}")


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    return pa.name == pb.name  # a hub id ("org/Name") and a local folder ".../Name"


def resolve_adapters(lora: LoraConfig, model_config: ModelConfig, head: str, model_path: str | None) -> AdapterSpec:
    """The adapters a run trains: from the ``lora:`` section, or from the PEFT folder in
    ``lora.init_from`` (whose rank, alpha, rslora and modules must agree with any the section sets)."""
    if lora.init_from is None:
        return lora.spec()
    folder = AdapterFolder(lora.init_from)
    check_base(folder, model_path)
    names = module_names(model_config, head)
    ours = {name: path for path, name in names.items()}
    modules = []
    for module, pair in sorted(folder.lora_modules().items()):
        if module not in ours:
            raise ValueError(f"lora.init_from: {folder.weights.path} adapts module '{module}', which a "
                             f"{model_config.model_type} model with {model_config.num_layers} layers does not have "
                             "(or which jaxalign cannot adapt: an output head or a fused tensor)")
        if set(pair) != {"A", "B"}:
            raise ValueError(f"lora.init_from: {folder.weights.path} holds only lora_{''.join(pair)} of '{module}'")
        modules.append(_joined(ours[module]))
    if not modules:
        raise ValueError(f"lora.init_from: {folder.weights.path} holds no lora_A/lora_B tensors")
    config = folder.config
    rank, alpha, rslora = int(config.get("r", 8)), float(config.get("lora_alpha", 8)), bool(config.get("use_rslora"))
    for key, ours_value, theirs, their_key in (("rank", lora.rank, rank, "r"), ("alpha", lora.alpha, alpha, "lora_alpha"),
                                              ("rslora", lora.rslora, rslora, "use_rslora")):
        if ours_value is not None and ours_value != theirs:
            raise ValueError(f"lora.{key} is {ours_value!r} but lora.init_from's {folder.config_path} has "
                             f"{their_key}: {theirs!r}; remove lora.{key} (the folder's applies) or make them agree")
    if lora.target_modules is not None:
        wanted = select_modules(_linear_paths(model_config, head), lora.targets)
        if sorted(wanted) != sorted(modules):
            raise ValueError(f"lora.target_modules selects {len(wanted)} modules but lora.init_from's "
                             f"{folder.weights.path} adapts {len(modules)} others; remove lora.target_modules "
                             "(the folder's modules apply) or make them agree")
    return AdapterSpec(rank, alpha, rslora, float(lora.dropout), tuple(re.escape(m) for m in modules), lora.param_dtype)


def _linear_paths(model_config: ModelConfig, head: str) -> list[str]:
    from jaxalign.models.init import abstract_model

    _, variables = abstract_model(model_config, head)
    return [_joined(path[:-1]) for path in variables if path[0] == "model" and path[-1] == "kernel"]


def adapter_values(folder_path: str, variables: Mapping[tuple, nnx.Variable], model_config: ModelConfig,
                   head: str) -> dict[tuple, np.ndarray]:
    """The folder's tensors in our layout, ``{parameter path: host array}``: every adapter
    (shaped like ``variables``', the abstract model's) and every fully saved module."""
    folder = AdapterFolder(folder_path)
    names = module_names(model_config, head)
    ours = {name: path for path, name in names.items()}
    values: dict[tuple, np.ndarray] = {}
    for module, pair in folder.lora_modules().items():
        for which, key, to_ours in (("A", "lora_a", lambda w: w.T), ("B", "lora_b", lambda w: w.T)):
            path = ours[module] + (key,)
            target = tuple(variables[path].get_value().shape)
            tensor = folder.weights.read(pair[which])
            expected = (target[-1], math.prod(target[:-1])) if which == "A" else (math.prod(target[1:]), target[0])
            if tensor.shape != expected:
                raise ValueError(f"lora.init_from: {folder.weights.path}: tensor '{pair[which]}' has shape "
                                 f"{tuple(tensor.shape)}, expected {expected} for this model")
            values[path] = np.asarray(to_ours(tensor)).reshape(target)
    maps = {m.hf_name: m for m in tensor_maps(model_config, head)}
    for name in folder.whole_tensors():
        m = maps.get(name)
        if m is None:
            raise ValueError(f"lora.init_from: {folder.weights.path} holds '{PEFT_PREFIX}{name}', which is not a "
                             f"tensor of a {model_config.model_type} {head} model")
        tensor = folder.weights.read(PEFT_PREFIX + name)
        if tuple(tensor.shape) != m.hf_shape:
            raise ValueError(f"lora.init_from: {folder.weights.path}: tensor '{PEFT_PREFIX}{name}' has shape "
                             f"{tuple(tensor.shape)}, expected {m.hf_shape} for this model")
        for path, part in zip(m.paths, m.to_params(tensor)):
            values[tuple(path)] = np.asarray(part)
    return values


# ---------------------------------------------------------------- export


def export_lora(model: nnx.Module, path: str | os.PathLike, how: str, trained: set[str],
                base_name: str | None) -> list[str]:
    """Exports an adapted model as ``lora.export`` says: ``adapter`` (a PEFT folder at
    ``path``), ``merged`` (a full Hugging Face folder at ``path``, each adapter folded into
    its kernel) or ``both`` (the adapter at ``path``, the merged model at ``path/merged``).
    Returns the folders written."""
    from jaxalign.models.hf_export import save_pretrained, to_host
    from jaxalign.models.lora import merged_kernels

    folders = []
    if how in ("adapter", "both"):
        save_adapter(model, path, model.adapters, trained, base_name, to_host)
        folders.append(str(path))
    if how in ("merged", "both"):
        target = Path(path) / "merged" if how == "both" else Path(path)
        save_pretrained(model, target, transform=merged_kernels(model))
        folders.append(str(target))
    return folders


def base_name(model_path: str | None) -> str | None:
    """What an exported adapter names as its base: the model folder's absolute path
    (None for a model built from model.config, which no folder holds)."""
    if model_path is None:
        return None
    path = Path(model_path).expanduser()
    return str(path.resolve()) if path.is_dir() else str(model_path)
