"""What ``jaxalign eval`` was pointed at: a run directory, an exported Hugging Face folder or a
run config, resolved to the folder to load, its kind (policy or reward model), the run it
belongs to (for defaults and for where the result goes) and the step to record."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jaxalign.eval.spec import EvalError

POLICY, REWARD_MODEL = "policy", "reward_model"


@dataclasses.dataclass
class Target:
    """model_dir: the HF folder evaluated; kind: ``policy`` or ``reward_model``; run_dir: the run
    it came from (None for a stand-alone folder); config: that run's ``TrainConfig`` when readable."""

    model_dir: Path
    kind: str
    run_dir: Path | None
    config: Any | None
    step: int

    def start_model(self) -> str | None:
        """The folder the run started from (its reference): ``ref_model.path``, else ``model.path``."""
        cfg = self.config
        if cfg is None:
            return None
        spec = cfg.ref_model if cfg.ref_model is not None and cfg.ref_model.path else cfg.model
        return spec.path


def folder_kind(folder: Path) -> str:
    """``policy`` for a ``*ForCausalLM`` folder, ``reward_model`` for ``*ForSequenceClassification``."""
    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise EvalError(f"eval: {folder} has no config.json: not a Hugging Face model folder") from None
    except (OSError, ValueError) as err:
        raise EvalError(f"eval: {config_file} is not readable JSON ({err})") from None
    architectures = config.get("architectures") or []
    if any(str(name).endswith("ForSequenceClassification") for name in architectures):
        return REWARD_MODEL
    if any(str(name).endswith("ForCausalLM") for name in architectures) or not architectures:
        return POLICY
    raise EvalError(f"eval: {config_file}: architecture {architectures[0]} is neither a causal LM (policy) "
                    f"nor a sequence classifier (reward model)")


def resolve(target: str | Path) -> Target:
    """A run dir (its ``export/``), an exported folder (inside a run dir or not) or a config YAML."""
    path = Path(target)
    if not path.exists():
        raise EvalError(f"eval: {target}: no such file or folder (give a run dir, an exported model folder "
                        f"or a run config)")
    if path.is_file():
        if path.suffix not in (".yaml", ".yml"):
            raise EvalError(f"eval: {target} is a file but not a YAML run config")
        config = _load_config(path)
        run_dir = Path(config.run_dir)
        return _in_run(run_dir, config, f"config {target}: its run dir {run_dir}")
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        return _in_run(path, _load_config(path / "config.yaml", quiet=True), f"run dir {path}")
    if (path / "config.json").is_file():
        parent = path.parent
        in_run = (parent / "config.yaml").is_file() or (parent / "metrics.jsonl").is_file()
        run_dir = parent if in_run else None
        config = _load_config(parent / "config.yaml", quiet=True) if in_run else None
        return Target(path, folder_kind(path), run_dir, config, _last_step(run_dir))
    raise EvalError(f"eval: {target} is neither a run dir (config.yaml) nor a model folder (config.json)")


def _in_run(run_dir: Path, config: Any, what: str) -> Target:
    export = run_dir / "export"
    if not (export / "config.json").is_file():
        raise EvalError(f"eval: {what} has no exported model ({export}/config.json); finish the run "
                        f"(export: true) or point eval at a model folder")
    return Target(export, folder_kind(export), run_dir, config, _last_step(run_dir))


def _load_config(path: Path, quiet: bool = False) -> Any | None:
    from jaxalign.config import load_config
    from jaxalign.configlib import ConfigError

    try:
        return load_config(path)
    except (ConfigError, ValueError, OSError) as err:
        if quiet:  # an old or foreign run's config: defaults come from the spec instead
            return None
        raise EvalError(f"eval: {err}") from None


def _last_step(run_dir: Path | None) -> int:
    """The run's last logged step (0 without a run or a log)."""
    if run_dir is None:
        return 0
    from jaxalign import run_events

    steps = [int(event.get("step", 0)) for event in run_events.read(run_dir)]
    return max(steps, default=0)
