"""XLA compiles: JAX's persistent compilation cache, and counting compiles for the metrics.

A run compiles its train step once per batch shape (``data.max_shapes`` bounds
them) plus a few small helpers. The persistent cache (``compilation.cache_dir``)
stores each compiled executable on disk, keyed by the program, the jax/XLA
version and the devices, so a second run of the same config loads instead of
compiling. ``CompileCounter`` listens to ``jax.monitoring`` and reports
``perf/compiles`` (XLA compiles and cache loads since the trainer started),
``perf/compile_seconds`` (tracing + lowering + compiling or loading) and
``perf/compile_cache_hits``.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import jax

from jaxalign.metrics_log import get_logger

log = get_logger(__name__)

AUTO = "auto"
# One event per XLA compile request (a fresh compile or a persistent-cache load).
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_COMPILE_PHASES = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   _COMPILE_EVENT)
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompilationConfig:
    """The ``compilation:`` section.

    cache_dir: where JAX's persistent compilation cache lives. ``auto`` (default):
      ``$JAXALIGN_CACHE_DIR/xla``, else ``$XDG_CACHE_HOME/jaxalign/xla``, else
      ``~/.cache/jaxalign/xla``; a path; or ``null`` / ``""`` for no cache. A
      ``jax_compilation_cache_dir`` the user set in JAX itself wins over ``auto``.
      The cache is trusted code: keep it in a folder only you can write.
    min_compile_seconds: only executables that took at least this long to
      compile are written (JAX's ``jax_persistent_cache_min_compile_time_secs``,
      whose own default is 1 s). 0 (default): all of them; a run has a few dozen,
      and on a busy machine even the small ones take seconds to compile.
    max_size_gib: a size bound; past it the least recently used entries are removed
      (JAX's ``jax_compilation_cache_max_size``). With a bound JAX also takes a file
      lock around each read and write, so processes sharing the folder never read an
      entry half written, but every write then reads the whole folder's index: about
      30 us an entry (60 ms a write at 2,000 entries, 240 ms at 8,000). ``null``
      (default, as JAX): no bound, no lock; a half-written entry read by another
      process is a warning and a fresh compile.
    """

    cache_dir: str | None = AUTO
    min_compile_seconds: float = 0.0
    max_size_gib: float | None = None

    def __post_init__(self) -> None:
        if not self.min_compile_seconds >= 0:  # also NaN
            raise ValueError(f"compilation.min_compile_seconds must be >= 0, got {self.min_compile_seconds}")
        if self.max_size_gib is not None and not 0 < self.max_size_gib < float("inf"):
            raise ValueError(f"compilation.max_size_gib must be a positive number of GiB or null (no bound), "
                             f"got {self.max_size_gib}")

    def resolved_cache_dir(self) -> Path | None:
        if not self.cache_dir:
            return None
        if self.cache_dir != AUTO:
            return Path(self.cache_dir).expanduser()
        user_set = jax.config.jax_compilation_cache_dir
        if user_set and user_set != getattr(enable_compilation_cache, "applied", None):
            return Path(user_set)
        root = os.environ.get("JAXALIGN_CACHE_DIR")
        if root:
            return Path(root).expanduser() / "xla"
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(xdg).expanduser() / "jaxalign" / "xla"


def enable_compilation_cache(cfg: CompilationConfig) -> Path | None:
    """Points JAX's persistent compilation cache at ``cfg``'s folder (or turns it
    off); returns the folder. Safe to call again with another folder in one process
    (tests do): JAX's cache object is reset so the next compile uses the new one."""
    from jax.experimental.compilation_cache import compilation_cache

    path = cfg.resolved_cache_dir()
    target = str(path) if path is not None else None
    if target is not None:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            log.warning("compilation cache off: cannot create %s (%s)", path, error)
            target = None
    max_size = -1 if cfg.max_size_gib is None else max(1, int(cfg.max_size_gib * 2**30))  # JAX: -1 = no bound
    if jax.config.jax_compilation_cache_dir != target or jax.config.jax_compilation_cache_max_size != max_size:
        jax.config.update("jax_compilation_cache_dir", target)
        jax.config.update("jax_compilation_cache_max_size", max_size)
        compilation_cache.reset_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", cfg.min_compile_seconds)
    enable_compilation_cache.applied = target
    return Path(target) if target else None


class CompileCounter:
    """Counts XLA compiles, cache loads and compile seconds from the moment it is built.

    JAX's monitoring listeners are process-wide and cannot be removed one by one,
    so one listener feeds shared totals and each counter reads differences.
    """

    _lock = threading.Lock()
    _totals = {"compiles": 0, "seconds": 0.0, "cache_hits": 0}
    _registered = False

    def __init__(self) -> None:
        self._register()
        self._start = dict(self._totals)

    @classmethod
    def _register(cls) -> None:
        with cls._lock:
            if cls._registered:
                return
            jax.monitoring.register_event_duration_secs_listener(cls._on_duration)
            jax.monitoring.register_event_listener(cls._on_event)
            cls._registered = True

    @classmethod
    def _on_duration(cls, name: str, seconds: float, **_: object) -> None:
        if name in _COMPILE_PHASES:
            with cls._lock:
                cls._totals["seconds"] += seconds
                cls._totals["compiles"] += name == _COMPILE_EVENT

    @classmethod
    def _on_event(cls, name: str, **_: object) -> None:
        if name == _CACHE_HIT_EVENT:
            with cls._lock:
                cls._totals["cache_hits"] += 1

    def metrics(self) -> dict[str, float]:
        """``perf/compiles``, ``perf/compile_seconds``, ``perf/compile_cache_hits`` since construction."""
        with self._lock:
            now = dict(self._totals)
        return {"perf/compiles": float(now["compiles"] - self._start["compiles"]),
                "perf/compile_seconds": now["seconds"] - self._start["seconds"],
                "perf/compile_cache_hits": float(now["cache_hits"] - self._start["cache_hits"])}
