"""The command line starts without jax where it needs none: ``jaxalign --help`` (every
subcommand's parser) and the file-only commands (``report``) import no jax, transformers
or Grain, so they answer at once (``jaxalign.lazy_exports``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dashboard_fixtures import write_run

HEAVY = ("jax", "transformers", "grain", "orbax", "flax", "torch")

PROBE = """
import json, sys
from jaxalign.cli import _parser, main
_parser().parse_args(["train", "x.yaml"])
code = main(sys.argv[1:]) if len(sys.argv) > 1 else 0
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _probe(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_parser_imports_no_jax():
    assert _probe() == {"code": 0, "heavy": []}


def test_report_runs_without_jax(tmp_path):
    pytest.importorskip("starlette", reason="the dashboard extra is not installed")
    run_dir = write_run(tmp_path / "run", range(1, 6))
    out = tmp_path / "report.html"
    assert _probe("report", str(run_dir), "-o", str(out)) == {"code": 0, "heavy": []}
    assert out.stat().st_size > 0


def test_lazy_names_resolve_and_unknown_names_fail_clearly():
    import jaxalign
    import jaxalign.data as data

    assert data.DataConfig is __import__("jaxalign.data.config", fromlist=["DataConfig"]).DataConfig
    assert "load_tokenizer" in data.__all__ and "load_tokenizer" in dir(data) and "__version__" in dir(jaxalign)
    with pytest.raises(AttributeError, match="'jaxalign.data' has no attribute 'nothing'"):
        data.nothing  # noqa: B018


def test_submodules_stay_attributes_of_their_package():
    # `import jaxalign.data` used to import its submodules, so `jaxalign.data.packing` worked.
    done = subprocess.run([sys.executable, "-c", "import jaxalign.data as d; print(d.packing.pad_batch.__name__)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "pad_batch", done.stderr[-2000:]


def test_only_from_imports_belong_under_type_checking():
    from jaxalign.lazy_exports import _type_checking_imports

    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a.b import c as d, e\n    import f\n"
    with pytest.raises(ValueError, match=r"pkg/__init__.py:4: only 'from package.module import name'"):
        _type_checking_imports(source, "pkg/__init__.py")
    assert _type_checking_imports(source.rsplit("    import", 1)[0], "x") == {"d": ("a.b", "c"), "e": ("a.b", "e")}


def test_all_must_match_the_type_checking_imports(tmp_path, monkeypatch):
    import types

    from jaxalign.lazy_exports import lazy_exports

    init = tmp_path / "__init__.py"
    init.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from json import dumps, loads\n")
    package = types.ModuleType("lazy_probe")
    package.__all__ = ["dumps"]
    monkeypatch.setitem(sys.modules, "lazy_probe", package)
    with pytest.raises(ImportError, match="__all__ must name exactly what is imported under TYPE_CHECKING"):
        lazy_exports("lazy_probe", str(init))
    package.__all__ = ["loads", "dumps"]
    package.__getattr__, _ = lazy_exports("lazy_probe", str(init))
    assert package.__getattr__("loads") is json.loads


PALLAS_PROBE = """
import sys
import jax.numpy as jnp
from jaxalign.models.attention_backends import attention_layout
import jaxalign.trainer
ids = jnp.zeros((1, 64), "int32")
attention_layout("tiled", ids, ids, ids, tile_pairs=jnp.zeros((1, 1, 2), "int32"))
print(sorted(m for m in sys.modules if m.startswith("jax.experimental.pallas") or m == "jaxalign.models.flash_attention"))
"""


def test_a_cpu_trainer_does_not_import_the_pallas_kernel():
    # Pallas and its Triton lowering took ~90 ms of every process's start; only model.attention: pallas needs them.
    done = subprocess.run([sys.executable, "-c", PALLAS_PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
