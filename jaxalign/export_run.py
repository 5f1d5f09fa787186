"""``jaxalign export RUN_DIR [--merged]``: a run's trained model, from its checkpoint, as Hugging Face folders.

The trainer exports once, at the end, as ``lora.export`` says. This exports any
checkpoint of a run afterwards (or while it trains): the run's ``config.yaml`` says
which model was trained (``model``, ``lora``, the algorithm's ``head``); the model is
rebuilt from it (the frozen base loaded from ``model.path`` as at training time) and the
checkpoint's trained part (adapters, or what ``model.trainable`` selects, or everything)
is put in. ``merged=True`` writes a full Hugging Face folder with each adapter folded
into its kernel (the same writer as ``lora.export: merged``). A run without LoRA has
nothing to merge: its whole model is written as a plain export, and ``ExportResult.note``
says so.

The checkpoint is opened read-only (a save the trainer has in flight is left alone)
and the folders are written under a temporary name and renamed when complete, so an
interrupted export leaves nothing a rerun or a user would take for a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax

from jaxalign.configlib import ConfigError
from jaxalign.models.trainable import leaf_paths

CONFIG_NAME = "config.yaml"


@dataclasses.dataclass
class ExportResult:
    step: int  # the checkpoint exported
    folders: list[Path]  # each loads on its own: a model, or a PEFT adapter
    note: str | None = None  # e.g. "--merged on a run without LoRA: a plain export"


def default_folder(run_dir: Path, step: int, merged: bool) -> Path:
    return run_dir / f"export-step{step}{'-merged' if merged else ''}"


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, merged: bool = False,
               step: int | None = None) -> ExportResult:
    """Exports checkpoint ``step`` (default: the newest intact one) of ``run_dir`` to ``out``
    (default ``RUN_DIR/export-step<N>[-merged]``; it must not exist yet). Without ``merged``
    the run's ``lora.export`` decides (a PEFT adapter folder by default)."""
    from jaxalign.algos import common
    from jaxalign.checkpoint import Checkpointer
    from jaxalign.config import load_config
    from jaxalign.data import load_tokenizer
    from jaxalign.sharding import MeshConfig, make_mesh

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no {CONFIG_NAME}); pass the run_dir a "
                          "`jaxalign train` wrote")
    cfg = load_config(run_dir / CONFIG_NAME)
    checkpointer = Checkpointer(cfg.checkpoint, run_dir, read_only=True)
    try:
        step = _intact_step(checkpointer, step)
        target = Path(out) if out is not None else default_folder(run_dir, step, merged)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise FileExistsError(f"{target} already exists; pass --out with a new folder, or remove it")
        lora, note = cfg.lora, None
        if merged and lora is None:
            note = f"{run_dir} trained no LoRA adapters: nothing to merge, wrote its whole model (a plain export)"
        elif merged:
            lora = dataclasses.replace(lora, export="merged")
        tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.path or "builtin")
        mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])  # one device: the export gathers to host anyway
        model = common.build_model(cfg.model, cfg, mesh, head=cfg.algorithm.head, tokenizer=tokenizer, lora=cfg.lora)
        graphdef, params = common.split_params(model)
        del model
        trained, frozen = common.trainable_split(cfg.model, params, cfg.lora)
        saved = checkpointer.restore_params(step, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        trained = _trained_part(saved, trained, run_dir, step)
    finally:
        checkpointer.close()

    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # a previous export interrupted here
    written = common.export_params(graphdef, trained, frozen, lora, common.base_name(cfg.model), str(partial))
    folders = [Path(folder) for folder in written] if written else [partial]
    finish_folders(folders, tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # an empty folder (checked above)
        target.rmdir()
    partial.rename(target)
    return ExportResult(step, [target / folder.relative_to(partial) for folder in folders], note)


def finish_folders(folders: list[Path], tokenizer: Any) -> None:
    """Adds the tokenizer to each exported folder, so each loads on its own, and writes its
    special ids into a model's config.json: transformers' sequence classifiers find each
    row's last token through ``pad_token_id``."""
    for folder in folders:
        tokenizer.save_pretrained(folder)
        config_path = folder / "config.json"
        if not config_path.exists():  # a PEFT adapter folder
            continue
        config = json.loads(config_path.read_text())
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                config[name] = int(value)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _intact_step(checkpointer, step: int | None) -> int:
    steps = checkpointer.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}: the run saved none yet "
                                "(checkpoint.every_steps / every_minutes, or a finished run)")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {checkpointer.directory}; have {steps}")
    for candidate in [step] if step is not None else reversed(steps):
        problems = checkpointer.verify(candidate, with_data=False)
        if not problems:
            return candidate
        if step is not None:
            raise ValueError(f"checkpoint {checkpointer.directory / str(step)} is damaged: {'; '.join(problems)}")
    raise ValueError(f"no intact checkpoint in {checkpointer.directory} (all of {steps} are damaged)")


def _shapes(tree: dict) -> dict:
    return {path: tuple(leaf.shape) for path, leaf in leaf_paths(tree)}


def _trained_part(saved: dict, trained: dict, run_dir: Path, step: int) -> dict:
    """The saved subtree shaped like the model's trained part: the state's params themselves
    (SFT, DPO, RM) or one entry of them (PPO's and GRPO's ``policy``)."""
    wanted = _shapes(trained)
    for candidate in [saved, *[value for value in saved.values() if isinstance(value, dict)]]:
        if _shapes(candidate) == wanted:  # the checkpoint's keys are strings ("0" for layer 0): take the model's
            saved_leaves = dict(leaf_paths(candidate))
            return _rebuilt(trained, saved_leaves)
    raise ConfigError(f"checkpoint step {step} of {run_dir} holds no parameters shaped like the trained part of "
                      f"{run_dir / CONFIG_NAME}'s model ({len(wanted)} arrays, e.g. {next(iter(wanted), '-')}); "
                      "was config.yaml edited after training?")


def _rebuilt(like: dict, leaves: dict[str, Any], prefix: str = "") -> dict:
    """``like``'s nested dict (its keys) holding ``leaves[path]`` in ``like``'s dtypes."""
    return {key: _rebuilt(value, leaves, f"{prefix}{key}/") if isinstance(value, dict)
            else leaves[f"{prefix}{key}"].astype(value.dtype) for key, value in like.items()}
