"""benchmarks/gpu_mfu.py runs on CPU too (a toy model), and its MFU is the FLOPs formula over the step time."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from data_fixtures import needs_shared_data

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@needs_shared_data
def test_gpu_mfu_smoke_run_on_cpu_reports_mfu_from_the_flops_formula():
    """The CPU smoke command of the script's docstring (~15 s), on one CPU device as a user runs it
    (the suite's 8 fake devices would pad the 4 pairs to 8 rows and time the fake mesh)."""
    peak = 0.2
    args = ["--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--intermediate", "128",
            "--pairs", "4", "--max-length", "256", "--steps", "3", "--dtype", "float32", "--peak-tflops", str(peak)]
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_mfu.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCHMARK_JSON "))
    result = json.loads(line.removeprefix("BENCHMARK_JSON "))
    assert result["platform"] == "cpu" and len(result["steps"]) == 3
    assert 1 <= result["compiled_steps"] <= 2  # data.max_shapes 2: at most two batch shapes
    vocab, hidden = 50257, 64
    for step in result["steps"]:
        flops = 8 * result["non_embedding"] * step["tokens"] + 8 * hidden * vocab * step["completion_tokens"]
        assert step["model_tflop"] == pytest.approx(flops / 1e12)
        assert step["mfu"] == pytest.approx(flops / step["run_seconds"] / (peak * 1e12))
        assert 0 < step["tokens"] <= step["slots"]
    back_to_back = result["back_to_back"]  # the same number of steps again, one wait at the end
    assert back_to_back["steps"] == 3 and back_to_back["seconds"] > 0 and back_to_back["mfu"] > 0
    steady = [s["mfu"] for s in result["steps"] if not s["compiled"]] or [s["mfu"] for s in result["steps"]]
    assert result["mfu"] == pytest.approx(statistics.median(steady))
