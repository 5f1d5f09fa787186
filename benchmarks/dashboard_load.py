"""How fast the dashboard opens over big runs: 5 runs x 100,000 logged steps by default.

    python benchmarks/dashboard_load.py [--runs 5] [--steps 100000] [--dir /tmp/dash-load]

Writes PPO-shaped runs (the 28 metrics PPO logs every step, an eval line and a checkpoint
event every 1,000 steps) unless they already exist, then measures:
  * read: ``RunSet`` parsing every metrics.jsonl (what ``jaxalign dashboard`` does before it
    prints its URL);
  * layout: building and serialising the page's payload (downsampled figures);
  * page: in headless Chromium, from navigation to the first screen of charts drawn
    (plotly.js parsed, payload fetched, visible figures drawn), cold and with plotly.js cached;
    wall time, and the page renderer's CPU time (what the wall time is on a quiet machine:
    on a shared one the wall time mostly measures the other processes);
  * smoothing: moving the smoothing control until the visible charts are redrawn;
  * live: one appended step until the page shows it (includes the page's poll interval).
Prints a table and one ``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxalign.dashboard.payload import build_payload  # noqa: E402
from jaxalign.dashboard.runs import RunSet  # noqa: E402
from jaxalign.dashboard.server import BackgroundServer, create_app  # noqa: E402

PPO_METRICS = (
    "grad_norm", "loss", "loss/policy_avg", "loss/value_avg", "objective/entropy", "objective/kl", "objective/kl_coef",
    "objective/non_score_reward", "objective/rlhf_reward", "objective/scores", "policy/approxkl_avg",
    "policy/clipfrac_avg", "policy/entropy_avg", "reply_length", "time/generation_s", "time/logps_s",
    "time/rollout_s", "time/scoring_s", "time/training_s", "tokens/generation", "tokens/training", "val/clipfrac_avg",
    "val/num_eos_tokens", "val/ratio", "tokens_per_s/generation", "tokens_per_s/training", "tokens_per_s",
    "learning_rate",
)


def write_runs(root: Path, runs: int, steps: int) -> None:
    for index in range(runs):
        run = root / f"run{index}"
        if (run / "metrics.jsonl").exists():
            continue
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(f"algo: ppo\nmax_steps: {steps}\n")
        rng = random.Random(index)
        with open(run / "metrics.jsonl", "w") as metrics, open(run / "events.jsonl", "w") as events:
            for step in range(1, steps + 1):
                line = {"step": step, "time": 1.7e9 + step}
                line.update({f"train/{name}": rng.random() + step / steps for name in PPO_METRICS})
                metrics.write(json.dumps(line) + "\n")
                if step % 1000 == 0:
                    metrics.write(json.dumps({"step": step, "eval/objective/scores": rng.random(),
                                              "eval/objective/kl": rng.random()}) + "\n")
                    events.write(json.dumps({"time": 1.7e9 + step, "step": step, "kind": "checkpoint"}) + "\n")


FIRST_SCREEN = "document.querySelectorAll('.card[data-drawn]').length >= 2"


def measure_page(url: str, run_dir: Path, chromium: str) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    results = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        devtools = page.context.new_cdp_session(page)
        devtools.send("Performance.enable")

        def cpu_seconds() -> float:
            # The renderer's CPU time: on a busy machine, what the wall time would be on a quiet one.
            metrics = devtools.send("Performance.getMetrics")["metrics"]
            return next(m["value"] for m in metrics if m["name"] == "ProcessTime")

        for label in ("page_cold", "page_cached"):
            cpu, started = cpu_seconds(), time.perf_counter()
            page.goto(url)
            page.wait_for_function(FIRST_SCREEN, timeout=120_000)
            results[f"{label}_s"] = time.perf_counter() - started
            results[f"{label}_cpu_s"] = cpu_seconds() - cpu
        drawn = page.evaluate("Object.fromEntries([...document.querySelectorAll('.card[data-drawn]')]"
                              ".filter(c => c.getBoundingClientRect().top < innerHeight)"
                              ".map(c => [c.dataset.id, c.dataset.drawn | 0]))")
        results["charts_drawn"] = len(drawn)
        started = time.perf_counter()
        page.evaluate("(() => { const s = document.getElementById('smoothing'); s.value = 0.9;"
                      " s.dispatchEvent(new Event('input')); })()")
        page.wait_for_function(f"Object.entries({json.dumps(drawn)}).every(([id, n]) =>"
                               " (document.querySelector(`.card[data-id='${id}']`).dataset.drawn | 0) > n)",
                               timeout=60_000)
        results["smoothing_s"] = time.perf_counter() - started
        version = int(page.evaluate("document.body.dataset.version"))
        with open(run_dir / "metrics.jsonl", "a") as metrics:
            metrics.write(json.dumps({"step": 10**7, "train/objective/scores": 1.0, "train/objective/kl": 1.0}) + "\n")
        started = time.perf_counter()
        page.wait_for_function(f"(document.body.dataset.version | 0) > {version}", timeout=60_000)
        results["live_update_s"] = time.perf_counter() - started
        browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--dir", default="/tmp/jaxalign-dashboard-load")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("google-chrome"))
    args = parser.parse_args()
    root = Path(args.dir)
    started = time.perf_counter()
    write_runs(root, args.runs, args.steps)
    print(f"runs ready in {time.perf_counter() - started:.1f} s "
          f"({sum(f.stat().st_size for f in root.glob('*/metrics.jsonl')) / 1e6:.0f} MB of metrics.jsonl)")

    started = time.perf_counter()
    runset = RunSet([root])
    results = {"read_s": time.perf_counter() - started}
    started = time.perf_counter()
    app = create_app(runset, poll_ms=1000)
    version, body = app.state.payload.get()
    results["layout_s"] = time.perf_counter() - started
    results["payload_mb"] = len(body) / 1e6
    started = time.perf_counter()
    build_payload(runset)
    results["relayout_s"] = time.perf_counter() - started  # what each live change costs the server
    if args.chromium:
        with BackgroundServer(app) as url:
            results.update(measure_page(url, root / "run0", args.chromium))
    # Remove the appended line so a rerun measures the same files.
    metrics = root / "run0" / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    if lines and b"10000000" in lines[-1]:
        metrics.write_bytes(b"".join(lines[:-1]))

    load = os.getloadavg()[0]
    print(f"{args.runs} runs x {args.steps} steps (load average {load:.1f} on {os.cpu_count()} CPUs)")
    for name, value in results.items():
        print(f"  {name:16s} {value:8.2f}")
    print("BENCHMARK_JSON " + json.dumps({"runs": args.runs, "steps": args.steps, "load": load, **results}))


if __name__ == "__main__":
    main()
