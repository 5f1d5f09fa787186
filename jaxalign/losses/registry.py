"""The loss registry: built-in and user losses, found by name.

A loss is a plain function ``fn(inputs, cfg) -> per-example losses [N]`` (or a
``LossTerms`` with metrics too), registered with ``@register_loss("name")``.
``get_loss`` finds it by registered name, by ``"package.module:function"`` or
by ``"path/to/file.py:function"``, importing the module (``jaxalign.plugins``); the function need not be registered (then the
decorator's defaults apply).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from typing import Any, Callable, Iterator, Mapping

import jax

from jaxalign.plugins import load_attribute

Array = jax.Array

LOSS_KINDS = ("pair", "unpaired", "reward", "pointwise", "listwise")


class LossParams:
    """Parameters a loss trains alongside the model (e.g. ordinal thresholds).

    ``init(levels)`` returns ``{name: array}`` (``levels``: the rating scale's
    number of levels); the reward-model algorithm keeps them in the train
    state, passes them to the loss as ``inputs.params``, and writes
    ``export(params)`` (JSON-able) into the exported ``config.json``.
    """

    def init(self, levels: int) -> dict[str, Any]:
        raise NotImplementedError

    def export(self, params: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class LossTerms:
    """What a loss function may return instead of a bare ``[N]`` array.

    ``per_example``: the loss of each example ``[N]`` (masked slots are
    ignored, so no need to multiply by the mask). ``metrics``: extra metrics,
    each an ``[N]`` array (reported as its mask-weighted mean) or a ready
    ``Stat``. ``chosen_rewards`` / ``rejected_rewards`` ``[N]``: the implicit
    rewards behind ``rewards/*`` when they are not the default
    ``beta * (policy - reference)`` log-ratios; an unpaired loss puts each
    example's reward in ``chosen_rewards``. ``chosen_logps`` /
    ``rejected_logps`` ``[N]``: what ``logps/*`` report when not the summed
    log-probs (SimPO and ORPO report per-token averages, as TRL does).
    """

    per_example: Array
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    chosen_rewards: Array | None = None
    rejected_rewards: Array | None = None
    chosen_logps: Array | None = None
    rejected_logps: Array | None = None


LossFn = Callable[..., "Array | LossTerms"]


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered loss and what the trainer must know about it.

    ``fn`` returns per-example losses; calling the spec runs it alone through
    the shared reduction: ``spec(inputs, cfg) -> (mean loss, metrics)``.
    """

    name: str
    fn: LossFn
    kind: str = "pair"
    needs_reference: bool = True
    uses_label_smoothing: bool = False
    soft_labels: bool = False  # reads the per-pair ``preference_strength`` column
    params: LossParams | None = None

    def output(self, inputs: Any, cfg: Any) -> Any:
        """This loss alone (weight 1, ``cfg``'s hyperparameters) as a ``LossOutput``."""
        from jaxalign.losses.build import loss_from_terms  # build imports this module

        return loss_from_terms(((self, 1.0),), cfg)(inputs)

    def __call__(self, inputs: Any, cfg: Any) -> tuple[Array, dict[str, Array]]:
        return self.output(inputs, cfg).result()


_REGISTRY: dict[str, LossSpec] = {}
_NOT_IMPORTED: list[str] | None = None  # inside ``user_losses_not_imported()``: names left unimported


@contextlib.contextmanager
def user_losses_not_imported() -> Iterator[list[str]]:
    """Inside, a loss named ``"module:function"`` is not imported (no user code
    runs, e.g. for ``jaxalign plan``): it stands in as a pair loss that needs a
    reference, and its name is appended to the yielded list."""
    global _NOT_IMPORTED
    previous, _NOT_IMPORTED = _NOT_IMPORTED, []
    try:
        yield _NOT_IMPORTED
    finally:
        _NOT_IMPORTED = previous


def register_loss(
    name: str,
    *,
    needs_reference: bool = True,
    kind: str = "pair",
    uses_label_smoothing: bool = False,
    soft_labels: bool = False,
    params: LossParams | None = None,
) -> Callable[[LossFn], LossFn]:
    """Decorator registering ``fn(inputs, cfg)`` under ``name``.

    kind: which input bundle the loss takes: ``"pair"`` (PreferenceInputs),
      ``"unpaired"`` (UnpairedInputs) or ``"reward"`` (RewardInputs).
    needs_reference: the loss reads reference log-probs, so the trainer must
      provide a reference model or precomputed reference log-probs.
    uses_label_smoothing: the loss reads ``cfg.label_smoothing``; a nonzero
      value with a loss that ignores it is a config error.
    soft_labels: the loss reads the per-pair ``preference_strength`` batch
      column (``data.strength_column``); data with that column and no loss
      reading it is an error.
    params: a ``LossParams`` for a loss that trains parameters of its own.

    Returns ``fn`` unchanged (with a ``loss_spec`` attribute), so it can still
    be called directly.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"register_loss({name!r}): kind must be one of {LOSS_KINDS}, got {kind!r}")
    if not name or ":" in name:
        raise ValueError(f"register_loss: a loss name must be non-empty and contain no ':', got {name!r}")

    def decorate(fn: LossFn) -> LossFn:
        existing = _REGISTRY.get(name)
        if existing is not None and not _same_function(existing.fn, fn):
            raise ValueError(
                f"a loss named {name!r} is already registered ({_qualified_name(existing.fn)}); "
                "pick another name"
            )
        spec = LossSpec(name, fn, kind, needs_reference, uses_label_smoothing, soft_labels, params)
        _REGISTRY[name] = spec
        fn.loss_spec = spec  # lets get_loss("module:function") find the options
        return fn

    return decorate


def get_loss(name: str) -> LossSpec:
    """Looks a loss up by registered name or ``"package.module:function"``."""
    if ":" in name:
        return _import_loss(name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise ValueError(_unknown_loss_message(name))


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_REGISTRY)


def soft_label_losses() -> list[str]:
    """Registered losses that read the per-pair ``preference_strength`` column, sorted."""
    return [name for name in sorted(_REGISTRY) if _REGISTRY[name].soft_labels]


def _import_loss(path: str) -> LossSpec:
    if _NOT_IMPORTED is not None:
        if path not in _NOT_IMPORTED:
            _NOT_IMPORTED.append(path)
        return LossSpec(path, _not_imported(path))
    fn = load_attribute(path, "loss", noun="function")
    if not callable(fn):
        raise ValueError(f"loss {path!r}: {path.rpartition(':')[2]!r} is not callable")
    spec = getattr(fn, "loss_spec", None)
    if isinstance(spec, LossSpec):
        return spec
    return LossSpec(path, fn)  # unregistered: the decorator's defaults


def _not_imported(path: str) -> LossFn:
    def fn(inputs: Any, cfg: Any) -> Array:
        raise RuntimeError(f"loss {path!r} was not imported (user_losses_not_imported); it cannot be computed")

    return fn


def _unknown_loss_message(name: str) -> str:
    known = list_losses()
    message = f"unknown loss {name!r}; registered losses: {', '.join(known)}."
    nearest = difflib.get_close_matches(name, known, n=1)
    if nearest:
        message += f" Did you mean {nearest[0]!r}?"
    return message + " A loss of your own can be named as 'package.module:function'."


def _qualified_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _same_function(a: Any, b: Any) -> bool:
    # Re-importing a module (reload, a test importing it twice, or under two
    # names: "tests.helper" and "helper") re-registers the same function under
    # the same name; that is not a clash.
    return a is b or _qualified_name(a) == _qualified_name(b) or _source(a) == _source(b) is not None


def _source(fn: Any) -> tuple[str, str] | None:
    code = getattr(fn, "__code__", None)
    return None if code is None else (code.co_filename, getattr(fn, "__qualname__", ""))
