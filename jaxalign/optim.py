"""The optimizer from config: AdamW, warmup + decay schedule, clipping, accumulation."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import optax


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-5
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0
    min_lr_ratio: float = 0.0  # final lr as a fraction of lr (cosine, linear)
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    grad_accum_steps: int = 1

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"optim.schedule must be cosine, linear or constant, got '{self.schedule}'")
        if not self.lr > 0 or self.lr == float("inf"):  # also catches NaN
            raise ValueError(f"optim.lr must be a positive finite number, got {self.lr}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"optim.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate per optimizer step: linear warmup, then the configured decay."""
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total_steps)
    decay_steps = max(total_steps - warmup, 1)
    end_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end_lr, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def on_host(schedule: optax.Schedule) -> Callable[[int], float]:
    """``schedule`` as a Python function of the step, evaluated on the host's CPU device.

    Called eagerly, an optax schedule runs each of its operations as its own program on
    the default device (an accelerator in a real run): 12 compiles at the first log line
    for a cosine schedule with warmup, and as many launches at every one after. Jitted
    once on the CPU it is one small compile. Without a CPU backend (``JAX_PLATFORMS``
    naming only an accelerator) it runs on the default device."""
    jitted = jax.jit(schedule)
    try:
        device = jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return lambda step: float(jitted(step))

    def at(step: int) -> float:
        with jax.default_device(device):
            return float(jitted(step))

    return at


def decay_mask(params):
    """Weight decay on matrices only: norms' scales and biases are left alone."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def build_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with clipping; with ``grad_accum_steps > 1`` gradients are averaged
    over that many micro-batches before each update (``optax.MultiSteps``)."""
    schedule = learning_rate_schedule(cfg, total_steps)
    parts = []
    if cfg.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    )
    optimizer = optax.chain(*parts)
    if cfg.grad_accum_steps > 1:
        optimizer = optax.MultiSteps(optimizer, every_k_schedule=cfg.grad_accum_steps)
    return optimizer
