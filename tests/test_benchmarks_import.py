"""Every benchmark script imports cleanly: its imports resolve against the library as it is
now, and importing it runs nothing (work waits for ``__main__``). A renamed library function
otherwise breaks a benchmark silently, until someone runs it (``attention_backends.py``
imported ``attention_tile_pairs`` from its old module for two sessions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
sys.argv = ["probe"]  # a script that parsed arguments at import would fail here
failed = {}
for name in json.loads(input()):
    try:
        importlib.import_module(name)
    except BaseException as error:  # SystemExit too: a script that ran at import
        failed[name] = f"{type(error).__name__}: {error}"
print(json.dumps(failed))
"""


def test_every_benchmark_script_imports_without_running():
    names = sorted(path.stem for path in BENCHMARKS.glob("*.py"))
    assert len(names) > 20, names
    done = subprocess.run([sys.executable, "-c", PROBE, str(BENCHMARKS)], input=json.dumps(names),
                          capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}
