"""The run config: one dataclass tree composed from each subsystem's own config."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from jaxalign import configlib
from jaxalign.algos.ppo_config import PPOConfig
from jaxalign.checkpoint import CheckpointConfig
from jaxalign.data import DataConfig
from jaxalign.health import HealthConfig
from jaxalign.losses import LossConfig
from jaxalign.optim import OptimConfig
from jaxalign.sharding import MeshConfig

ALGORITHMS = ("rm", "sft", "dpo", "ppo")


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
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.path is None) == (self.config is None):
            raise ValueError("model: set exactly one of model.path (an HF checkpoint folder) or model.config")


@dataclasses.dataclass
class LogConfig:
    every_steps: int = 10
    tensorboard: bool = True
    wandb: dict[str, Any] | None = None  # e.g. {project: my-project}; used only if wandb is installed

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise ValueError(f"log.every_steps must be >= 1 (log every N optimizer steps), got {self.every_steps}")


@dataclasses.dataclass
class TrainConfig:
    algo: str = "rm"
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
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)  # algo: ppo only
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    health: HealthConfig = dataclasses.field(default_factory=HealthConfig)

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ValueError(f"algo must be one of {', '.join(ALGORITHMS)}, got '{self.algo}'")
        if self.algo == "rm" and self.loss.kind != "reward":
            if self.loss.name != LossConfig.name:
                raise ValueError(f"algo rm trains with a reward loss (loss.name: bradley_terry), got loss.name '{self.loss.name}'")
            # The loss section's default is DPO's; a reward model's is Bradley-Terry.
            self.loss = dataclasses.replace(self.loss, name="bradley_terry")
        if self.algo == "dpo" and not self.loss.needs_reference:
            if self.precompute_ref_logps:
                raise ValueError(f"precompute_ref_logps: loss '{self.loss.name}' is reference-free, so there are "
                                 "no reference log-probs to precompute; remove precompute_ref_logps")
            if self.ref_model is not None:
                raise ValueError(f"ref_model is set but loss '{self.loss.name}' is reference-free; remove ref_model")
        if self.algo == "ppo":
            self.ppo.check_for_run(self.data.batch_size)
            if self.optim.grad_accum_steps != 1:
                raise ValueError("optim.grad_accum_steps must be 1 for algo ppo: each step's rollout is split "
                                 "into ppo.num_mini_batches instead")
            if self.precompute_ref_logps:
                raise ValueError("precompute_ref_logps does not apply to algo ppo: its replies are sampled "
                                 "during training, so the reference scores them as they come")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")


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
