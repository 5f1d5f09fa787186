"""The persistent compilation cache's settings (``compilation:``): the optional size bound, the file
lock that comes with it, and their validation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxalign.compilation import CompilationConfig, enable_compilation_cache


@pytest.fixture
def cache_settings():
    """Whatever a test sets, the session's cache settings are put back afterwards."""
    yield
    enable_compilation_cache(CompilationConfig())


def _compile_distinct_programs(count: int) -> None:
    for size in range(count):
        jax.jit(lambda x, k=size: jnp.sin(x) * k + jnp.cos(x) ** k)(jnp.ones(size + 3)).block_until_ready()


def _entries(folder):
    return [path for path in folder.iterdir() if path.name.endswith("-cache")]


def test_a_bound_brings_jaxs_file_lock(tmp_path, cache_settings):
    folder = enable_compilation_cache(CompilationConfig(cache_dir=str(tmp_path / "xla"), max_size_gib=4))
    assert jax.config.jax_compilation_cache_max_size == 4 * 2**30
    _compile_distinct_programs(2)
    assert len(_entries(folder)) >= 2
    assert (folder / ".lockfile").exists()  # readers and writers of the folder take turns
    assert any(path.name.endswith("-atime") for path in folder.iterdir())  # least recently used goes first


def test_the_cache_stays_under_its_bound(tmp_path, cache_settings):
    bound_gib = 40_000 / 2**30  # a few entries of a few kB each
    folder = enable_compilation_cache(CompilationConfig(cache_dir=str(tmp_path / "xla"), max_size_gib=bound_gib))
    _compile_distinct_programs(30)
    sizes = [path.stat().st_size for path in _entries(folder)]
    assert 1 < len(sizes) < 30 and sum(sizes) <= 40_000


def test_by_default_no_bound_and_no_lock(tmp_path, cache_settings):
    folder = enable_compilation_cache(CompilationConfig(cache_dir=str(tmp_path / "xla")))
    assert jax.config.jax_compilation_cache_max_size == -1
    _compile_distinct_programs(2)
    assert len(_entries(folder)) >= 2 and not (folder / ".lockfile").exists()


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan")])
def test_a_bad_bound_is_one_clear_error(value):
    with pytest.raises(ValueError, match="compilation.max_size_gib must be a positive number of GiB or null"):
        CompilationConfig(max_size_gib=value)
