"""The algorithm contract and registry.

An algorithm is one object (a subclass of ``Algorithm``) that owns everything
about it: its config sections, their cross-section checks, the batches it eats,
its setup into the ``AlgoRun`` the trainer drives, and its terms for
``jaxalign plan``. The built-in ones register themselves with
``@register_algorithm``; a user's is named in YAML by import path
(``algo: mypkg.algos:MyAlgo`` or ``algo: path/to/file.py:MyAlgo``) and needs no
registration. ``config.py``, ``plan.py`` and ``trainer.py`` look algorithms up
here and never compare their names.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from jaxalign.plugins import PluginError, is_import_path, load_attribute

if TYPE_CHECKING:  # the config and planner import this module, not the other way round
    from jax.sharding import Mesh

    from jaxalign.plan import MemoryPlan, PlanContext, Term
    from jaxalign.plan_report import Candidate
    from jaxalign.sinks import Sink
    from jaxalign.train_state import AlgoRun

# Modules whose import registers the built-in algorithms; loaded on first lookup
# (they import config.py, which imports this module).
BUILTIN_MODULES = ("jaxalign.algos.rm", "jaxalign.algos.sft", "jaxalign.algos.dpo", "jaxalign.algos.ppo",
                   "jaxalign.algos.grpo")
DATA_KINDS = ("preference", "unpaired", "reward", "pointwise", "listwise", "sft", "prompt")


class Algorithm:
    """Base class of every algorithm. Subclasses set the class attributes and
    override ``data_kind`` and ``setup``; the rest have working defaults.

    name: what ``algo:`` says for a registered algorithm (an import-path algorithm's
      name is only used in messages).
    sections: the config sections this algorithm owns, ``{yaml key: dataclass}``
      (``{"ppo": PPOConfig}``). They appear in the run config only when this
      algorithm is chosen, built strictly from YAML like every other section
      (defaults, ``__post_init__`` checks, unknown keys suggest the close one).
    head: the trained model's output head, ``"causal_lm"`` or ``"score"`` (the
      default plan counts that model).
    supports_lora: whether ``setup`` honours the ``lora:`` section (builds its trained
      model with ``common.build_model(..., lora=cfg.lora)`` and splits it with
      ``common.trainable_split(..., lora=cfg.lora)``, or for a policy with
      ``algos.policy.build_policy``); a config with ``lora:`` for an algorithm that does
      not is an error. Off by default, so an algorithm that never reads ``lora:`` cannot
      silently train the whole model when adapters were asked for.
    """

    name: ClassVar[str] = ""
    sections: ClassVar[Mapping[str, type]] = {}
    head: ClassVar[str] = "causal_lm"
    supports_lora: ClassVar[bool] = False

    def check_config(self, cfg: Any) -> None:
        """Checks that span sections (e.g. a loss that needs a reference with
        ``precompute_ref_logps``); raise ``ValueError`` with a message naming the keys."""

    def data_kind(self, cfg: Any) -> str:
        """Which batches the trainer's pipeline builds: one of ``DATA_KINDS``."""
        raise NotImplementedError(f"algorithm {self.name!r} must define data_kind(cfg)")

    def setup(self, cfg: Any, mesh: "Mesh", tokenizer: Any, total_steps: int, sink: "Sink | None" = None) -> "AlgoRun":
        """Loads the models and returns the ``AlgoRun`` the trainer drives
        (``train_state.py``). ``sink`` is where a rollout hook publishes tables
        and events (``jaxalign.sinks``); ``None`` outside the trainer."""
        raise NotImplementedError(f"algorithm {self.name!r} must define setup(cfg, mesh, tokenizer, total_steps, sink)")

    def plan_terms(self, cfg: Any, ctx: "PlanContext") -> "list[Term]":
        """Per-device memory terms of one train step for ``jaxalign plan``. Default: the
        trained model (``head``) with AdamW on the worst-case batch of ``data_kind``."""
        return ctx.trained_model_terms(self.head, ctx.worst_case_workload(self.data_kind(cfg)))

    def plan_knobs(self, cfg: Any, plan: "MemoryPlan") -> "list[Candidate]":
        """Config changes, specific to this algorithm, that would lower ``plan``'s total
        (the planner adds the generic ones: fsdp, remat, shorter sequences). Default:
        half the micro-batch with twice the gradient accumulation."""
        from jaxalign.plan_report import halve_micro_batch

        return halve_micro_batch(cfg, plan)

    def __repr__(self) -> str:
        return f"<algorithm {self.name or type(self).__name__}>"


_REGISTRY: dict[str, Algorithm] = {}
_IMPORTED: dict[str, Algorithm] = {}  # import-path algorithms, one instance per spec
_builtins_loaded = False


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: registers one instance of ``cls`` under ``cls.name``."""
    instance = _instance(cls, cls.__name__)
    if not cls.name or is_import_path(cls.name):
        raise ValueError(f"register_algorithm: {cls.__name__}.name must be non-empty and contain no ':', got {cls.name!r}")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and _qualified(type(existing)) != _qualified(cls):
        raise ValueError(f"an algorithm named {cls.name!r} is already registered ({_qualified(type(existing))}); "
                         "pick another name")
    _REGISTRY[cls.name] = instance
    return cls


def get_algorithm(spec: str) -> Algorithm:
    """The algorithm ``algo:`` names: a registered name, ``package.module:Class`` or
    ``path/to/file.py:Class`` (a class is instantiated with no arguments; an
    instance is used as it is). Unknown names raise ``ValueError`` with the close one."""
    if is_import_path(spec):
        if spec not in _IMPORTED:
            _IMPORTED[spec] = _instance(load_attribute(spec, "algo", noun="Class"), spec)
        return _IMPORTED[spec]
    _load_builtins()
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    known = list_algorithms()
    close = difflib.get_close_matches(spec, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"algo must be one of {', '.join(known)} or an import path to your own "
                     f"('package.module:Class' or 'file.py:Class'), got '{spec}'.{hint}")


def list_algorithms() -> list[str]:
    """Registered algorithm names: the built-ins in ``BUILTIN_MODULES`` order, then the others
    as they registered (stable whatever imported what first)."""
    _load_builtins()

    def rank(name: str) -> int:
        module = type(_REGISTRY[name]).__module__
        return BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)

    return sorted(_REGISTRY, key=rank)


def sections_of_others(algorithm: Algorithm) -> dict[str, list[str]]:
    """``{section: [algorithm names]}`` for the sections other registered algorithms own
    and ``algorithm`` does not (a run config may still carry them; see config.py)."""
    owners: dict[str, list[str]] = {}
    for name in list_algorithms():
        other = _REGISTRY[name]
        for section in other.sections:
            if other is not algorithm and section not in algorithm.sections:
                owners.setdefault(section, []).append(name)
    return owners


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def _instance(found: Any, spec: str) -> Algorithm:
    if isinstance(found, type) and issubclass(found, Algorithm):
        found = found()
    if not isinstance(found, Algorithm):
        raise PluginError(f"algo '{spec}': expected a subclass of jaxalign.Algorithm (or an instance of one), "
                          f"got {type(found).__name__}")
    for section, section_cls in found.sections.items():
        if not isinstance(section, str) or not isinstance(section_cls, type):
            raise PluginError(f"algo '{spec}': sections must map a YAML key to a dataclass, got {section!r}: {section_cls!r}")
    return found


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"

