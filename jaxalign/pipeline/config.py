"""The pipeline config: stages (each a run config plus ``--set`` overrides), sweeps, evals.

```yaml
run_dir: runs/alignment            # stage NAME runs in run_dir/NAME
stages:                            # run in this order
  sft: {config: alignment/sft.yaml}            # paths relative to this file
  rm:  {config: alignment/rm.yaml, set: {model.path: ${sft}}, eval: false}
  ppo: {config: alignment/ppo.yaml, set: {model.path: ${sft}, ppo.reward_model: ${rm}}}
sweeps:                            # extra runs of a stage, one per value, after all stages (--sweeps)
  ppo: {ppo.kl_coef: [0.02, 0.05, 0.5]}
eval:                              # after each stage (that has eval not false)
  reference: ${sft}                # KL is measured against this policy
  rewards: [{model: ${rm}}]
  runs: [{name: greedy, prompts: ..., temperature: 0}, {name: sampled, ...}]
```

``${NAME}`` anywhere in a value is stage NAME's export folder; a stage may only name
stages before it. Errors are ``PipelineError`` (a ``ConfigError``) with one line naming
the file and key.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from jaxalign.configlib import ConfigError, load_yaml
from jaxalign.pipeline.evaluate import eval_spec

REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.=-]+)\}")
STAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=-]*$")
STAGE_KEYS = ("config", "set", "eval")
TOP_KEYS = ("run_dir", "stages", "sweeps", "eval")
EVAL_KEYS = ("reference", "rewards", "runs")


class PipelineError(ConfigError):
    """A pipeline config that cannot run; the message is one line naming file and key."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training run: ``config`` (a run config YAML) with ``overrides`` (``key=value``
    strings, ``${stage}`` already resolved) in ``run_dir``. ``needs``: the stages whose exports
    it reads. ``sweep``: ``(base stage, key, value)`` for a sweep run."""

    name: str
    config: Path
    overrides: tuple[str, ...]
    run_dir: Path
    needs: tuple[str, ...]
    evaluate: bool = True
    sweep: tuple[str, str, Any] | None = None

    @property
    def export(self) -> Path:
        return self.run_dir / "export"


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """Stages in run order and the evaluations run on each finished policy stage.
    ``evals``: resolved eval specs (``${stage}`` replaced); ``eval_needs``: the stages they read."""

    path: Path
    run_dir: Path
    stages: tuple[Stage, ...]
    evals: tuple[dict[str, Any], ...]
    eval_needs: tuple[str, ...]

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)


def _references(value: Any) -> list[str]:
    if isinstance(value, str):
        return REFERENCE.findall(value)
    if isinstance(value, Mapping):
        return [name for item in value.values() for name in _references(item)]
    if isinstance(value, (list, tuple)):
        return [name for item in value for name in _references(item)]
    return []


def _substitute(value: Any, exports: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return REFERENCE.sub(lambda match: exports[match.group(1)], value)
    if isinstance(value, Mapping):
        return {key: _substitute(item, exports) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_substitute(item, exports) for item in value]
    return value


def _check_known(where: str, mapping: Any, known: tuple[str, ...]) -> None:
    if not isinstance(mapping, Mapping):
        raise PipelineError(f"{where}: expected a mapping, got {type(mapping).__name__}")
    unknown = [key for key in mapping if key not in known]
    if unknown:
        raise PipelineError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(known)}")


def _check_references(where: str, value: Any, earlier: list[str]) -> tuple[str, ...]:
    names = _references(value)
    for name in names:
        if name not in earlier:
            hint = f"stages before it: {', '.join(earlier)}" if earlier else "it is the first stage"
            raise PipelineError(f"{where}: ${{{name}}} names no earlier stage ({hint})")
    return tuple(dict.fromkeys(names))


def _override(key: str, value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def _sweep_name(stage: str, key: str, value: Any) -> str:
    return f"{stage}-{key.rsplit('.', 1)[-1]}={value}"


def load_pipeline(path: str | Path, sweeps: bool = False) -> Pipeline:
    """Reads and checks a pipeline YAML; with ``sweeps`` the sweep runs are added after their stage."""
    path = Path(path)
    where = str(path)
    tree = load_yaml(path)  # missing file / bad YAML: ConfigError with the file name
    _check_known(where, tree, TOP_KEYS)
    if not tree.get("stages"):
        raise PipelineError(f"{where}: 'stages' is missing or empty; give at least one stage with a 'config'")
    stages_tree = tree["stages"]
    _check_known(f"{where}: stages", stages_tree, tuple(stages_tree) if isinstance(stages_tree, Mapping) else ())
    root = Path(tree.get("run_dir") or f"runs/{path.stem}")
    sweep_tree = tree.get("sweeps") or {}
    _check_known(f"{where}: sweeps", sweep_tree, tuple(stages_tree))

    stages: list[Stage] = []
    sweep_stages: list[Stage] = []  # after every stage: the pipeline's own results come first
    exports: dict[str, str] = {}
    for name, entry in stages_tree.items():
        name = str(name)
        here = f"{where}: stages.{name}"
        if not STAGE_NAME.match(name):
            raise PipelineError(f"{here}: a stage name may use letters, digits, '_', '-', '.', '=' only")
        _check_known(here, entry, STAGE_KEYS)
        if "config" not in entry:
            raise PipelineError(f"{here}: 'config' (the stage's run config YAML) is missing")
        config = (path.parent / str(entry["config"])).resolve()
        if not config.is_file():
            raise PipelineError(f"{here}.config: file not found: {config}")
        settings = entry.get("set") or {}
        _check_known(f"{here}.set", settings, tuple(settings) if isinstance(settings, Mapping) else ())
        if "run_dir" in settings:
            raise PipelineError(f"{here}.set.run_dir: the pipeline sets each stage's run_dir ({root}/{name})")
        needs = _check_references(f"{here}.set", settings, list(exports))
        overrides = tuple(_override(key, value) for key, value in _substitute(settings, exports).items())
        evaluate = bool(entry.get("eval", True))
        stage = Stage(name, config, (f"run_dir={root / name}", *overrides), root / name, needs, evaluate)
        stages.append(stage)
        exports[name] = str(stage.export)
        if sweeps and name in sweep_tree:
            for key, values in (sweep_tree[name] or {}).items():
                if not isinstance(values, list) or not values:
                    raise PipelineError(f"{where}: sweeps.{name}.{key}: expected a list of values")
                for value in values:
                    sweep_name = _sweep_name(name, str(key), value)
                    sweep_stages.append(Stage(sweep_name, config, (f"run_dir={root / sweep_name}", *overrides,
                                                             _override(str(key), value)),
                                        root / sweep_name, needs, evaluate, (name, str(key), value)))
    evals, eval_needs = _evals(tree.get("eval") or {}, f"{where}: eval", exports)
    return Pipeline(path, root, tuple(stages + sweep_stages), evals, eval_needs)


def _evals(tree: Any, where: str, exports: Mapping[str, str]) -> tuple[tuple[dict[str, Any], ...], tuple[str, ...]]:
    _check_known(where, tree, EVAL_KEYS)
    needs = _check_references(where, {key: tree.get(key) for key in ("reference", "rewards")}, list(exports))
    shared = _substitute({key: tree[key] for key in ("reference", "rewards") if key in tree}, exports)
    runs = tree.get("runs") or []
    if not isinstance(runs, list):
        raise PipelineError(f"{where}.runs: expected a list of evaluations")
    specs, names = [], set()
    for index, run in enumerate(runs):
        if not isinstance(run, Mapping):
            raise PipelineError(f"{where}.runs[{index}]: expected a mapping")
        try:
            spec = eval_spec({**shared, **run}, f"{where}.runs[{index}]")
        except ValueError as err:
            raise PipelineError(str(err)) from err
        if spec["name"] in names:
            raise PipelineError(f"{where}.runs[{index}]: the name {spec['name']!r} is used twice")
        names.add(spec["name"])
        specs.append(spec)
    return tuple(specs), needs
