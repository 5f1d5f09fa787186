"""Reward sources: registered kinds, the specs that name them in YAML, and their weighted set.

A source scores the real rows of a rollout: ``source.score(inputs) ->
(scores float32 [K], valid bool [K])`` where ``valid`` is False for "not
applicable" (a Python function's ``None``). Kinds are registered by name like
losses (``register_reward_source``); the built-in kinds are

- ``function``: a Python function with TRL's reward-function signature
  (``jaxalign.rewards``), by import path;
- ``model``: a frozen Hugging Face ``*ForSequenceClassification`` folder
  (``jaxalign.rl.reward_model``);
- ``verifier``: a rule-based check from ``jaxalign.rl.verifiers`` with its options.

In YAML a source is a string (``module:function``, ``file.py:function``, or a
reward-model folder) or a mapping with one kind key and optional ``weight``,
``name``, ``role`` and the kind's options::

    rewards:
      - my_rewards.py:polite
      - {model: runs/rm/export, weight: 0.5}
      - {verifier: exact_answer, column: answer, pattern: "answer is (-?\\d+)"}
      - {function: jaxalign.tasks.alignment:gold, role: gold}

A source's ``role`` is ``train`` (the default: its weighted score is the reward trained on) or
``gold``: scored and logged beside the training reward (``gold/reward``), never part of the
total an algorithm trains on, so a proxy reward's over-optimisation shows (Gao et al. 2022).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
from jax.sharding import Mesh

from jaxalign.rewards import RewardFn, call_reward_function, load_reward_function
from jaxalign.rl.shaping import RewardShaping


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """One reward source as configured: its kind, what it points at (an import path, a folder,
    a verifier name), its weight in the total, an optional display name and the kind's options."""

    kind: str
    target: str
    weight: float = 1.0
    name: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    role: str = "train"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"reward source '{self.target}': role must be one of {', '.join(ROLES)}, got {self.role!r}")


@dataclasses.dataclass
class ScoringInputs:
    """The K real rows of a rollout, as sources see them (host side), plus the device batch.

    prompts, completions ``[K]`` str; completion_ids ``[K]`` lists of token ids (up to and
    including the stop token); columns: the dataset rows' other columns, each a ``[K]`` list;
    where ``[K]``: each row's ``file:line``; rows ``[K]`` int: their indices in ``batch``
    (a ``RolloutBatch`` of R >= K rows)."""

    prompts: list[str]
    completions: list[str]
    completion_ids: list[list[int]]
    columns: dict[str, list[Any]]
    where: list[str]
    rows: np.ndarray
    batch: Any


@dataclasses.dataclass
class SourceContext:
    """What building a source may need: the policy's tokenizer, the mesh (and sharding rules),
    the compute dtype and the storage dtype of frozen models, and a function giving sample texts
    of the prompts (to check at setup that a reward model's tokenizer can encode them; called
    only when a reward model needs its own tokens)."""

    tokenizer: Any
    mesh: Mesh | None = None
    rules: dict | None = None
    dtype: str = "float32"
    frozen_dtype: str = "float32"
    sample_texts: Callable[[], Sequence[str]] = tuple


class RewardSource(Protocol):
    name: str

    def score(self, inputs: ScoringInputs) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 ``[K]``, valid bool ``[K]``) for ``inputs``' rows."""


ROLES = ("train", "gold")  # train: summed into the reward trained on; gold: logged beside it only
META_KEYS = ("weight", "name", "role")  # keys of a source's YAML mapping that are not the kind's options
SourceBuilder = Callable[[RewardSpec, SourceContext], RewardSource]
_KINDS: dict[str, SourceBuilder] = {}


def register_reward_source(kind: str) -> Callable[[SourceBuilder], SourceBuilder]:
    """Decorator registering ``builder(spec, context) -> RewardSource`` for specs of ``kind``."""
    def decorate(builder: SourceBuilder) -> SourceBuilder:
        _KINDS[kind] = builder
        return builder

    return decorate


def reward_source_kinds() -> tuple[str, ...]:
    _load_builtin_kinds()
    return tuple(sorted(_KINDS))


def _load_builtin_kinds() -> None:
    from jaxalign.rl import ensemble, reward_model, verifiers  # noqa: F401  (they register their kinds)


class FunctionSource:
    """A Python function with TRL's reward-function signature (see ``jaxalign.rewards``)."""

    def __init__(self, fn: RewardFn, name: str, label: str):
        self.fn, self.name, self.label = fn, name, label

    def score(self, inputs: ScoringInputs) -> tuple[np.ndarray, np.ndarray]:
        return call_reward_function(self.fn, self.label, inputs.prompts, inputs.completions, inputs.columns,
                                    inputs.completion_ids, inputs.where)


@register_reward_source("function")
def _function_source(spec: RewardSpec, context: SourceContext) -> FunctionSource:
    if spec.options:
        raise ValueError(f"reward source '{spec.target}': a function takes no options, got {sorted(spec.options)}")
    fn = load_reward_function(spec.target)
    return FunctionSource(fn, spec.name or getattr(fn, "__name__", spec.target), spec.target)


def parse_reward_spec(entry: Any, where: str = "rewards") -> RewardSpec:
    """A YAML entry (string or mapping) -> ``RewardSpec``; errors name ``where``."""
    if isinstance(entry, RewardSpec):
        return entry
    if isinstance(entry, str):
        kind = "model" if Path(entry).is_dir() else "function"
        if kind == "function" and ":" not in entry:
            raise ValueError(f"{where}: '{entry}' is neither a reward-model folder nor 'module:function' / "
                             f"'file.py:function'")
        return RewardSpec(kind, entry)
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: a reward source is a string or a mapping, got {type(entry).__name__}")
    kinds = reward_source_kinds()
    given = [kind for kind in kinds if kind in entry]
    if len(given) != 1:
        unknown = [key for key in entry if key not in META_KEYS]
        hint = ""
        if unknown and not given:
            close = difflib.get_close_matches(unknown[0], kinds, n=1)
            hint = f" ('{unknown[0]}' is not a kind{f'; did you mean {close[0]!r}?' if close else ''})"
        raise ValueError(f"{where}: name exactly one source kind of {', '.join(kinds)}, got {sorted(entry)}{hint}")
    kind = given[0]
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"{where}.weight must be a number, got {weight!r}")
    options = {key: value for key, value in entry.items() if key not in (kind, *META_KEYS)}
    role = entry.get("role", "train")
    if role not in ROLES:
        raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
    return RewardSpec(kind, str(entry[kind]), float(weight), entry.get("name"), options, role)


def parse_reward_specs(entries: Sequence[Any], weights: Sequence[float] | None = None,
                       where: str = "rewards") -> list[RewardSpec]:
    """Several entries; ``weights`` (TRL's ``reward_weights``), when given, replace theirs."""
    if isinstance(entries, (str, Mapping)):
        entries = [entries]
    specs = [parse_reward_spec(entry, f"{where}[{i}]") for i, entry in enumerate(entries)]
    if not specs:
        raise ValueError(f"{where}: no reward source given")
    if weights is not None:
        if len(weights) != len(specs):
            raise ValueError(f"{where}: {len(weights)} weights for {len(specs)} reward sources")
        specs = [dataclasses.replace(spec, weight=float(weight)) for spec, weight in zip(specs, weights)]
    return specs


class RewardSet:
    """Weighted reward sources, each with a role. ``score`` gives per-source scores and validity
    ``[K, S]``; ``total`` the weighted sum over each row's valid train-role sources (TRL's
    ``nansum``), shaped by ``shaping``; ``gold`` the same over gold-role sources, unshaped."""

    def __init__(self, sources: Sequence[RewardSource], weights: Sequence[float], roles: Sequence[str] | None = None,
                 shaping: RewardShaping | None = None):
        names = _unique([source.name for source in sources])
        for source, name in zip(sources, names):
            source.name = name
        self.sources, self.weights = list(sources), np.asarray(weights, np.float32)
        self.roles = tuple(roles) if roles is not None else ("train",) * len(self.sources)
        if len(self.roles) != len(self.sources):
            raise ValueError(f"RewardSet: {len(self.roles)} roles for {len(self.sources)} sources")
        if self.sources and "train" not in self.roles:
            raise ValueError("rewards: every source has role 'gold'; at least one must be trained on (role: train)")
        self.shaping = shaping or RewardShaping()
        self.last_metrics: dict[str, float] = {}

    @classmethod
    def build(cls, specs: Sequence[RewardSpec], context: SourceContext,
              shaping: RewardShaping | Mapping[str, Any] | None = None) -> "RewardSet":
        _load_builtin_kinds()
        sources = []
        for spec in specs:
            if spec.kind not in _KINDS:
                raise ValueError(f"unknown reward source kind '{spec.kind}'; registered: {', '.join(sorted(_KINDS))}")
            sources.append(_KINDS[spec.kind](spec, context))
        return cls(sources, [spec.weight for spec in specs], [spec.role for spec in specs], RewardShaping.of(shaping))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(source.name for source in self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def score(self, inputs: ScoringInputs) -> tuple[np.ndarray, np.ndarray]:
        """Every source's scores; a source's ``last_metrics`` (e.g. an ensemble's disagreement) are kept
        in ``self.last_metrics`` as ``rewards/NAME/KEY``."""
        count = len(inputs.completions)
        scores, valid = np.zeros((count, len(self)), np.float32), np.zeros((count, len(self)), bool)
        self.last_metrics = {}
        for index, source in enumerate(self.sources):
            scores[:, index], valid[:, index] = source.score(inputs)
            for key, value in (getattr(source, "last_metrics", None) or {}).items():
                self.last_metrics[f"rewards/{source.name}/{key}"] = float(value)
        return scores, valid

    def _weighted(self, scores: np.ndarray, valid: np.ndarray, role: str) -> tuple[np.ndarray, np.ndarray]:
        use = np.asarray([r == role for r in self.roles], bool)
        valid = valid & use
        return np.sum(np.where(valid, scores * self.weights, 0.0), axis=1).astype(np.float32), valid.any(axis=1)

    def total(self, scores: np.ndarray, valid: np.ndarray,
              lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(weighted sum ``[K]`` over valid train-role sources, 0 where none; whether any scored the row),
        shaped by ``self.shaping`` when ``lengths`` ``[K]`` (reply tokens) are given; the shaping's
        metrics are added to ``self.last_metrics``."""
        total, any_valid = self._weighted(scores, valid, "train")
        if lengths is not None and self.shaping.active:
            shaped, metrics = self.shaping.apply(total[any_valid], np.asarray(lengths)[any_valid])
            total[any_valid] = shaped
            self.last_metrics.update(metrics)
        return total, any_valid

    def gold(self, scores: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(weighted sum ``[K]`` over valid gold-role sources, whether any scored the row); never shaped."""
        return self._weighted(scores, valid, "gold")


def _unique(names: Sequence[str]) -> list[str]:
    """Names made unique by suffixes (two functions called ``score`` -> score, score_2)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out
