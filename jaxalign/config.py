"""The run config: one dataclass tree composed from each subsystem's own config.

The shared sections live on ``TrainConfig``; each algorithm's own sections
(``loss:`` for rm and dpo, ``ppo:`` for ppo, a user algorithm's) are declared
by the algorithm object (``jaxalign.algos.registry``) and added to the class
the config is built as: ``config_class(algorithm)``, a subclass of
``TrainConfig`` with those sections as fields (``cfg.ppo.kl_coef``).
Loading picks that class from the YAML's ``algo`` (``TrainConfig.resolve_class``).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping, Sequence

from jaxalign import configlib
from jaxalign.algos.registry import Algorithm, get_algorithm, sections_of_others
from jaxalign.checkpoint import CheckpointConfig
from jaxalign.compilation import CompilationConfig
from jaxalign.data import DataConfig
from jaxalign.eval.spec import EvalSpec
from jaxalign.health import HealthConfig
from jaxalign.metrics_log import get_logger
from jaxalign.models.config import ATTENTION_BACKENDS
from jaxalign.models.lora import LoraConfig
from jaxalign.models.trainable import compile_patterns
from jaxalign.optim import OptimConfig
from jaxalign.sharding import MeshConfig
from jaxalign.sinks.config import LogConfig


@dataclasses.dataclass
class ModelSpec:
    """Where the model comes from: a Hugging Face folder (``path``) or, for a
    fresh random model, an HF-style config mapping (``config``)."""

    path: str | None = None
    config: dict[str, Any] | None = None
    tokenizer: str | None = None  # default: the model folder
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"  # none | full | dots
    attention: str = "auto"  # auto | xla | tiled | cudnn | pallas (jaxalign/models/attention_backends.py)
    seed: int = 0
    # Which parameters train: regular expressions matched in full against parameter paths
    # ("model/embed_tokens/embedding"); see jaxalign/models/trainable.py. Default: all of them.
    trainable: list[str] | None = None
    freeze: list[str] | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.config is None):
            raise ValueError("model: set exactly one of model.path (an HF checkpoint folder) or model.config")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"model.attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention!r}")
        compile_patterns(self.trainable, "model.trainable")
        compile_patterns(self.freeze, "model.freeze")

    @property
    def partial(self) -> bool:
        """Whether only part of the model trains (``trainable`` or ``freeze`` set)."""
        return bool(self.trainable) or bool(self.freeze)


@dataclasses.dataclass
class TrainConfig:
    """Shared sections; ``config_class(algorithm)`` adds the algorithm's own."""

    algo: str = "rm"  # a registered name, or 'package.module:Class' / 'file.py:Class'
    run_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 0  # 0 = run data.num_epochs epochs
    eval_every: int = 0  # optimizer steps; 0 = only at the end
    eval_batches: int = 0  # 0 = the whole eval split
    export: bool = True  # write an HF folder to <run_dir>/export at the end
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    ref_model: ModelSpec | None = None  # default: a frozen copy of the starting policy
    # DPO family: compute reference log-probs in one pass before training (saved in
    # run_dir, reused on resume), so training holds only the policy in memory.
    precompute_ref_logps: bool = False
    # Train LoRA adapters on model instead of all its weights (docs/lora.md); None = full fine-tuning.
    lora: LoraConfig | None = None
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    health: HealthConfig = dataclasses.field(default_factory=HealthConfig)
    # Generation-based evaluation (jaxalign eval's spec) every eval.every_steps steps and at the end.
    eval: EvalSpec | None = None
    compilation: CompilationConfig = dataclasses.field(default_factory=CompilationConfig)

    def __post_init__(self) -> None:
        expected = config_class(self.algorithm)
        if type(self) is not expected:
            raise ValueError(f"a config for algo '{self.algo}' must be a {expected.__name__} (with its sections "
                             f"{', '.join(self.algorithm.sections) or 'none'}); build it with load_config, "
                             f"configlib.from_dict or jaxalign.config.config_class")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.ref_model is not None and self.ref_model.partial:
            raise ValueError("ref_model.trainable/ref_model.freeze: the reference is frozen whole; remove them")
        if self.lora is not None and not self.algorithm.supports_lora:
            raise ValueError(f"lora: algo {self.algo} does not train LoRA adapters (its class does not set "
                             "supports_lora = True); remove the lora section")
        self.algorithm.check_config(self)

    @property
    def algorithm(self) -> Algorithm:
        """The registered (or imported) algorithm object ``algo`` names."""
        return get_algorithm(self.algo)

    @classmethod
    def resolve_class(cls, values: Mapping[str, Any]) -> tuple[type["TrainConfig"], dict[str, Any]]:
        """The class to build ``values`` as, and the values to build it from (a configlib
        hook): the class with the sections of ``values["algo"]``'s algorithm. A section
        another algorithm owns is dropped with a warning (a DPO config run with
        ``--set algo=sft`` still has its ``loss:``)."""
        algo = values.get("algo", cls.algo)
        if not isinstance(algo, str):
            raise configlib.ConfigError(f"config key 'algo' expects a name or 'module:Class', got {algo!r}")
        try:
            algorithm = get_algorithm(algo)
        except ValueError as err:
            raise configlib.ConfigError(str(err)) from err
        values = dict(values)
        for section, owners in sections_of_others(algorithm).items():
            if section in values:
                del values[section]
                get_logger().warning("config: section '%s' applies to algo %s; algo %s ignores it",
                                     section, " and ".join(owners), algo)
        return config_class(algorithm), values


@functools.cache
def config_class(algorithm: Algorithm | str) -> type[TrainConfig]:
    """``TrainConfig`` plus ``algorithm``'s sections as fields (each defaulting to its
    dataclass's defaults); ``TrainConfig`` itself for an algorithm without sections."""
    if isinstance(algorithm, str):
        return config_class(get_algorithm(algorithm))
    if not algorithm.sections:
        return TrainConfig
    shared = {field.name for field in dataclasses.fields(TrainConfig)}
    clashes = sorted(set(algorithm.sections) & shared)
    if clashes:
        raise ValueError(f"algorithm {algorithm.name or algorithm!r} declares section(s) {', '.join(clashes)}, "
                         "which are shared run-config keys; rename them")
    fields = [(name, section, dataclasses.field(default_factory=section))
              for name, section in algorithm.sections.items()]
    name = f"TrainConfig_{algorithm.name or type(algorithm).__name__}"
    namespace = {"__module__": __name__, "__doc__": f"The run config of algo {algorithm.name or algorithm!r}."}
    return dataclasses.make_dataclass(name, fields, bases=(TrainConfig,), namespace=namespace)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Reads a YAML run config with ``--set a.b=c`` overrides; unknown keys are errors."""
    try:
        return configlib.load(TrainConfig, path, overrides)
    except configlib.ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise configlib.ConfigError(f"{path or 'config'}: {err}") from err


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return configlib.to_dict(cfg)
