"""``LossConfig``: which loss (or weighted sum of losses) and its hyperparameters.

Option names follow TRL's (``beta``, ``label_smoothing``, ``simpo_gamma``,
``cpo_alpha``, ``rpo_alpha``, ``desirable_weight``, ``undesirable_weight``,
``center_rewards_coefficient``) so a TRL config carries over. The config is
checked when it is made; every message names the field and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from jaxalign.losses.registry import LossSpec, get_loss

_SMOOTHING_LIMIT = 0.5  # at 0.5 chosen and rejected are indistinguishable; robust divides by 1 - 2*eps


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Which loss to train with, and its hyperparameters.

    name: a registered loss name, ``"package.module:function"``, or a list of
      them whose per-example losses are summed with ``weights``
      (e.g. RPO = ``["sigmoid", "sft"]`` with ``[1.0, 1.0]``).
    weights: one per name; default all 1.0.
    beta: the inverse temperature / KL strength (ORPO's lambda, IPO's tau).
    label_smoothing: assumed label-noise rate for sigmoid (cDPO), robust,
      simpo and cpo; must lie in [0, 0.5).
    simpo_gamma: SimPO's target reward margin gamma.
    cpo_alpha: weight of the NLL term inside ``cpo``.
    rpo_alpha: if set, adds ``"sft"`` with this weight (TRL's RPO option).
    desirable_weight, undesirable_weight: KTO's lambda_D and lambda_U.
    center_rewards_coefficient: reward-model term pulling r_c + r_r to 0.
    options: free-form hyperparameters for a loss of your own.
    """

    name: str | Sequence[str] = "sigmoid"
    weights: Sequence[float] | None = None
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    cpo_alpha: float = 1.0
    rpo_alpha: float | None = None
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    center_rewards_coefficient: float | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # YAML gives lists; keep tuples so the config stays immutable.
        if not isinstance(self.name, str):
            object.__setattr__(self, "name", tuple(self.name))
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(_as_number("weights", w) for w in self.weights))
        self.validate()

    @property
    def names(self) -> tuple[str, ...]:
        """The loss names, always as a tuple (``rpo_alpha``'s sft excluded)."""
        return (self.name,) if isinstance(self.name, str) else tuple(self.name)

    @property
    def components(self) -> tuple[tuple[str, float], ...]:
        """``(name, weight)`` of every summed term, ``rpo_alpha``'s ``sft`` included."""
        weights = self.weights if self.weights is not None else (1.0,) * len(self.names)
        terms = tuple(zip(self.names, weights))
        if self.rpo_alpha is not None:
            terms += (("sft", float(self.rpo_alpha)),)
        return terms

    def specs(self) -> tuple[tuple[LossSpec, float], ...]:
        """``(LossSpec, weight)`` of every term."""
        return tuple((get_loss(name), weight) for name, weight in self.components)

    @property
    def kind(self) -> str:
        """Input bundle the loss takes: "pair", "unpaired" or "reward"."""
        return self.specs()[0][0].kind

    @property
    def needs_reference(self) -> bool:
        """Whether the trainer must provide reference log-probs."""
        return any(spec.needs_reference for spec, _ in self.specs())

    def validate(self) -> None:
        """Raises ValueError with a message naming the offending field."""
        names = self.names
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"loss.name must be a loss name or a non-empty list of names, got {self.name!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"loss.name lists a loss twice: {list(names)}; give it one weight instead")
        if self.weights is not None and len(self.weights) != len(names):
            raise ValueError(
                f"loss.weights has {len(self.weights)} entries but loss.name has {len(names)} "
                f"({list(names)}); give one weight per loss"
            )
        for field in ("beta", "label_smoothing", "simpo_gamma", "cpo_alpha", "desirable_weight", "undesirable_weight"):
            _require_finite(field, getattr(self, field))
        for weight in self.weights or ():
            _require_finite("weights", weight)
        if self.beta <= 0:
            raise ValueError(f"loss.beta must be > 0, got {self.beta}")
        if self.cpo_alpha < 0:
            raise ValueError(f"loss.cpo_alpha must be >= 0, got {self.cpo_alpha}")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise ValueError(
                "loss.desirable_weight and loss.undesirable_weight must be > 0, got "
                f"{self.desirable_weight} and {self.undesirable_weight}"
            )
        if self.rpo_alpha is not None:
            _require_finite("rpo_alpha", self.rpo_alpha)
            if self.rpo_alpha < 0:
                raise ValueError(f"loss.rpo_alpha must be >= 0, got {self.rpo_alpha}")
            if "sft" in names:
                raise ValueError("loss.rpo_alpha adds an 'sft' term itself; drop 'sft' from loss.name or unset rpo_alpha")
        if self.center_rewards_coefficient is not None:
            _require_finite("center_rewards_coefficient", self.center_rewards_coefficient)
            if self.center_rewards_coefficient < 0:
                raise ValueError(f"loss.center_rewards_coefficient must be >= 0, got {self.center_rewards_coefficient}")

        specs = [spec for spec, _ in self.specs()]  # raises on an unknown name
        kinds = {spec.kind for spec in specs}
        if len(kinds) > 1:
            described = ", ".join(f"{spec.name} ({spec.kind})" for spec in specs)
            raise ValueError(f"loss.name combines losses over different inputs: {described}; all must be of one kind")
        self._validate_label_smoothing(specs)

    def _validate_label_smoothing(self, specs: list[LossSpec]) -> None:
        smoothing = self.label_smoothing
        if smoothing == 0.0:
            return
        users = [spec.name for spec in specs if spec.uses_label_smoothing]
        if not users:
            raise ValueError(
                f"loss.label_smoothing={smoothing} but {', '.join(spec.name for spec in specs)} ignores it; "
                "it applies to sigmoid (cDPO), robust, simpo and cpo. Set it to 0.0"
            )
        if not 0.0 <= smoothing < _SMOOTHING_LIMIT:
            raise ValueError(
                f"loss.label_smoothing must lie in [0, 0.5) for {', '.join(users)}, got {smoothing}"
                + (" (robust divides by 1 - 2 * label_smoothing)" if "robust" in users else "")
            )


def _as_number(field: str, value: Any) -> float:
    try:
        return float(value)  # YAML 1.1 reads "5e-1" as a string
    except (TypeError, ValueError):
        raise ValueError(f"loss.{field} must hold numbers, got {value!r}") from None


def _require_finite(field: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"loss.{field} must be a finite number, got {value!r}")
