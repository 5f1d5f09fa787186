"""Is the run still healthy? Non-finite weights and a diverging loss.

Two checks, both cheap:

- ``with_state_check(train_step)`` wraps a pure train step so that its metrics
  also carry ``FINITE_STATE_KEY``: 1.0 when every float leaf of the *updated*
  state (parameters, optimizer moments, ``extra``) is finite. The reduction
  runs inside the jitted step and is summed on device with the other metrics,
  so it costs no host sync; the trainer reads it at logging points and before
  every save, so a non-finite state is never written to a checkpoint.
- ``DivergenceWatch`` compares each logged loss with the first one and warns
  (or stops, if asked) when it grows past ``divergence_factor`` times it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxalign.metrics_log import get_logger

log = get_logger("health")

FINITE_STATE_KEY = "health/finite_state"


@dataclasses.dataclass
class HealthConfig:
    """The ``health:`` section: what counts as a run going wrong."""

    # Warn when a logged train loss exceeds this many times the first logged
    # loss (0 = off). Only meaningful for losses that start positive, which
    # is every built-in loss except PPO's (the watch stays off when the first
    # loss is <= 0).
    divergence_factor: float = 100.0
    # Stop (exit non-zero, nothing more saved) instead of only warning.
    stop_on_divergence: bool = False

    def __post_init__(self) -> None:
        if not math.isfinite(self.divergence_factor) or self.divergence_factor < 0:
            raise ValueError(f"health.divergence_factor must be a finite number >= 0 (0 = off), got {self.divergence_factor}")
        if 0 < self.divergence_factor <= 1:
            raise ValueError(f"health.divergence_factor must be > 1 (or 0 = off), got {self.divergence_factor}")


class NonFiniteStateError(RuntimeError):
    """The loss or the updated weights became NaN or inf; nothing more is saved."""


class DivergenceError(RuntimeError):
    """The loss diverged and ``health.stop_on_divergence`` is set."""


def all_finite(tree: Any) -> jax.Array:
    """True (a scalar) when every inexact leaf of ``tree`` is finite."""
    flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def with_state_check(train_step: Callable) -> Callable:
    """``train_step`` whose metrics also hold ``FINITE_STATE_KEY`` (1.0 or 0.0) for the updated state."""

    def checked(state, batch, frozen):
        state, metrics = train_step(state, batch, frozen)
        return state, {**metrics, FINITE_STATE_KEY: all_finite(state).astype(jnp.float32)}

    return checked


def step_is_finite(metrics: dict) -> jax.Array:
    """Device scalar: the step's loss is finite and its updated state too (when checked)."""
    finite = jnp.isfinite(metrics["loss"])
    if FINITE_STATE_KEY in metrics:
        finite = finite & (metrics[FINITE_STATE_KEY] > 0)
    return finite


def non_finite_message(step: int, loss_finite: bool, last_checkpoint: int | None, directory: Any) -> str:
    """What went wrong, where the last finite checkpoint is, and what to try."""
    what = ("the loss became NaN or inf" if not loss_finite
            else "the updated weights or optimizer state became NaN or inf")
    if last_checkpoint is None:
        kept = "no checkpoint was saved before it"
    else:
        kept = f"the last finite checkpoint is step {last_checkpoint} in {directory}, intact"
    cause = "" if not loss_finite else " (the loss computed before the update was still finite)"
    return (f"{what} by optimizer step {step}{cause}; stopping without saving it: {kept}. "
            "Try a lower optim.lr, optim.max_grad_norm > 0, or float32 parameters.")


class DivergenceWatch:
    """Compares logged losses with the first finite, positive one."""

    def __init__(self, cfg: HealthConfig, on_event: Callable[..., None] | None = None) -> None:
        self.cfg = cfg
        self.on_event = on_event  # called as on_event(kind, message, step, **fields)
        self.first: float | None = None
        self.diverging = False

    def observe(self, step: int, loss: float) -> dict[str, float]:
        """Checks one logged loss; returns metrics to log with it (``health/loss_ratio``)
        and warns once each time the loss crosses the threshold."""
        if self.cfg.divergence_factor == 0 or not math.isfinite(loss):
            return {}
        if self.first is None:
            if loss <= 0:
                return {}
            self.first = loss
        ratio = loss / self.first
        diverging = ratio > self.cfg.divergence_factor
        if diverging and not self.diverging:
            message = (f"the loss is diverging: {loss:.4g} at step {step} is {ratio:.0f}x its first logged value "
                       f"{self.first:.4g} (health.divergence_factor {self.cfg.divergence_factor:g}). "
                       "Try a lower optim.lr or optim.max_grad_norm > 0")
            if self.on_event is not None:
                self.on_event("loss_diverging", message, step, ratio=ratio)
            if self.cfg.stop_on_divergence:
                raise DivergenceError(message + "; stopping (health.stop_on_divergence)")
            log.warning("!!! %s", message)
        self.diverging = diverging
        return {"health/loss_ratio": ratio}
