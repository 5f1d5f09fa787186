"""Benchmark: how step time and memory grow, jaxalign vs TRL / transformers.

* DPO and reward-model training steps against ``max_length`` (pairs per step
  fixed) and against pairs per step (``max_length`` fixed), jaxalign and TRL
  side by side: the same random-init Llama folder, the same pairs in the same
  order, the same optimizer, steps alternating between the sides, jaxalign's
  compile seconds subtracted (``common``'s machinery; see ``rm_vs_trl.py`` and
  ``dpo_vs_trl.py``);
* generation (sampling, EOS ignored) against batch size and new tokens,
  ``jaxalign.generation.generate`` vs transformers' ``generate`` on
  ``generate_vs_hf.py``'s ~34M Llama.

Data: HH-RLHF helpful-base test pairs (``tests/data/real``) lengthened towards
each ``max_length`` by putting earlier conversations in front of the prompt
(``common.hh_pairs_to_length``), so a longer ``max_length`` really means longer
rows. Every point runs in fresh processes (``scaling_point.py``); each training
side in its own, so the peak memory reported is that side's RSS high-water mark
(``ru_maxrss``), the same measure for both (torch's CPU allocations are invisible
to ``tracemalloc``). Time: median over the timed steps; generation: best of
``--repeats``. The growth exponent is the least-squares slope of log(time) on
log(x) over the points of one axis.

The default model is small (hidden 256, 4 layers, 4 heads, MLP 688, GPT-2
vocabulary, untied head) so that TRL's long rows finish on a 2-core CPU;
``--quick`` (the default) runs a reduced grid in ~15-20 minutes there,
``--full`` the whole grid (for a bigger machine).

Usage::

    python benchmarks/scaling.py [--quick | --full] [--only dpo rm generate] [--out results.jsonl]
                                 [--plot docs/img/scaling.png] [--markdown table.md]
    python benchmarks/scaling.py --from results.jsonl --plot docs/img/scaling.png   # report saved points
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

# Two warm-up steps: a shape's second run often still grows the process's heap (the first
# run's buffers are not yet freed when it allocates), and both sides' heaps grow in their
# first steps; with one warm-up that one-off cost fell in the timed median (docs/benchmarks.md).
GRIDS = {
    "quick": dict(lengths=[256, 512, 1024], pairs_at_length=4, pairs=[4, 8, 16], length_at_pairs=256,
                  batches=[1, 4, 16, 64], tokens_at_batch=64, new_tokens=[32, 128, 512], batch_at_tokens=8,
                  warmup=2, steps=2, repeats=2),
    "full": dict(lengths=[256, 512, 1024, 2048], pairs_at_length=8, pairs=[4, 8, 16, 32], length_at_pairs=512,
                 batches=[1, 2, 4, 8, 16, 32, 64], tokens_at_batch=128, new_tokens=[32, 64, 128, 256, 512],
                 batch_at_tokens=16, warmup=2, steps=3, repeats=3),
}
LEARNING_RATES = {"dpo": 1e-6, "rm": 1e-5}
PEERS = {"train": ("trl_s", "TRL"), "generate": ("hf_s", "HF generate")}


def growth_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) on log(x): y ~ x^k gives k (nan with under 2 points)."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y and y > 0 and math.isfinite(y)]
    if len(points) < 2:
        return float("nan")
    mean_x = sum(p[0] for p in points) / len(points)
    mean_y = sum(p[1] for p in points) / len(points)
    spread = sum((p[0] - mean_x) ** 2 for p in points)
    return sum((p[0] - mean_x) * (p[1] - mean_y) for p in points) / spread if spread else float("nan")


def axes(grid: dict, only: Sequence[str]) -> list[dict]:
    """The benchmark's axes: each a list of point specs varying one quantity."""
    out = []
    for workload in ("dpo", "rm"):
        if workload not in only:
            continue
        out.append({"kind": "train", "workload": workload, "axis": "max_length", "points": [
            {"workload": workload, "max_length": n, "pairs": grid["pairs_at_length"]} for n in grid["lengths"]]})
        out.append({"kind": "train", "workload": workload, "axis": "pairs", "points": [
            {"workload": workload, "max_length": grid["length_at_pairs"], "pairs": n} for n in grid["pairs"]]})
    if "generate" in only:
        out.append({"kind": "generate", "workload": "generate", "axis": "batch", "points": [
            {"batch": n, "new_tokens": grid["tokens_at_batch"]} for n in grid["batches"]]})
        out.append({"kind": "generate", "workload": "generate", "axis": "new_tokens", "points": [
            {"batch": grid["batch_at_tokens"], "new_tokens": n} for n in grid["new_tokens"]]})
    return out


def point_key(kind: str, point: dict) -> tuple:
    return (kind, *sorted((k, v) for k, v in point.items() if k in ("workload", "max_length", "pairs", "batch",
                                                                     "new_tokens")))


def run_point(kind: str, spec: dict, timeout: float) -> dict | None:
    """Runs ``scaling_point.py`` for one point in a fresh process group (killed whole on timeout)."""
    flag = "--train" if kind == "train" else "--generate"
    command = ["nice", "-n", "10", sys.executable, str(HERE / "scaling_point.py"), flag, json.dumps(spec)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout:.0f} s: {spec}", flush=True)
        return None
    finally:  # on a timeout, or when this runner is stopped: the point's processes go too
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    for line in out.splitlines():
        if line.startswith("SCALING_POINT "):
            return json.loads(line[len("SCALING_POINT "):])
    print(f"  failed (exit {process.returncode}): {spec}\n{err[-3000:]}", flush=True)
    return None


def build_models(tmp: Path, args, only: Sequence[str]) -> dict[str, str]:
    """One checkpoint per model kind, shared by all points of that kind."""
    paths = {}
    if {"dpo", "rm"} & set(only):
        data = common.shared_data(common.HH_FILE, common.GPT2_TOKENIZER)
        tokenizer = common.gpt2_tokenizer(data[common.GPT2_TOKENIZER])
        config = dict(vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=args.heads, num_key_value_heads=args.heads,
                      intermediate_size=args.intermediate, max_position_embeddings=2 * max(args.grid["lengths"]),
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
        for workload, head in (("dpo", "causal_lm"), ("rm", "score")):
            if workload in only:
                common.build_llama(tmp / workload, head=head, seed=0, **config)
                paths[workload] = str(tmp / workload)
        paths["params"] = common.llama_params(config)
    if "generate" in only:
        from generate_vs_hf import build_checkpoint

        paths["generate_params"] = build_checkpoint(tmp / "generate")
        paths["generate"] = str(tmp / "generate")
    return paths


def measure(args) -> list[dict]:
    """Runs every point of the chosen axes once (shared points once), appending to ``--out``."""
    results: dict[tuple, dict] = {}
    out = open(args.out, "a") if args.out else None
    with tempfile.TemporaryDirectory(prefix="jaxalign-scaling-models-") as tmp:
        models = build_models(Path(tmp), args, args.only)
        print(f"models built; params {models.get('params')}, generation {models.get('generate_params')}", flush=True)
        for axis in axes(args.grid, args.only):
            for point in axis["points"]:
                key = point_key(axis["kind"], point)
                if key in results:
                    continue
                if axis["kind"] == "train":
                    spec = {**point, "ckpt": models[point["workload"]], "lr": LEARNING_RATES[point["workload"]],
                            "warmup": args.grid["warmup"], "steps": args.grid["steps"]}
                else:
                    spec = {**point, "ckpt": models["generate"], "repeats": args.grid["repeats"],
                            "torch_threads": args.torch_threads}
                start = time.perf_counter()
                result = run_point(axis["kind"], spec, args.point_timeout)
                if result is None:
                    continue
                result["model"] = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                                   "intermediate": args.intermediate} if axis["kind"] == "train" else "generate_vs_hf"
                results[key] = result
                peer_key, peer = PEERS[axis["kind"]]
                print(f"  {key[1:]}: jaxalign {result['jaxalign_s']:.3f} s, {peer} {result[peer_key]:.3f} s "
                      f"({time.perf_counter() - start:.0f} s wall, load {result['load_average'][0]:.2f})", flush=True)
                if out:
                    out.write(json.dumps(result) + "\n")
                    out.flush()
    if out:
        out.close()
    return list(results.values())


def axis_rows(axis: dict, results: Sequence[dict]) -> list[dict]:
    """The measured points of one axis, in the axis's order."""
    found = {point_key(r["kind"], {k: r[k] for k in r if k in ("workload", "max_length", "pairs", "batch",
                                                                "new_tokens")}): r for r in results}
    return [found[key] for key in (point_key(axis["kind"], p) for p in axis["points"]) if key in found]


def step_memory(result: dict, side: str) -> float:
    """MB a side's RSS rose above what it held once set up (model, data, trainer):
    what the steps themselves took (for TRL this includes AdamW's state, which
    torch creates at the first step; jaxalign creates it in setup)."""
    return result[f"{side}_peak_rss_mb"] - result[f"{side}_ready_rss_mb"]


def report(results: Sequence[dict], grid: dict, only: Sequence[str]) -> tuple[str, list[dict]]:
    """Markdown tables, one per axis, with growth exponents; returns (text, fitted axes)."""
    lines, fitted = [], []
    for axis in axes(grid, only):
        rows = axis_rows(axis, results)
        if not rows:
            continue
        peer_key, peer = PEERS[axis["kind"]]
        xs = [r[axis["axis"]] for r in rows]
        fit = {**axis, "rows": rows, "peer": peer, "peer_key": peer_key,
               "jaxalign_k": growth_exponent(xs, [r["jaxalign_s"] for r in rows]),
               "peer_k": growth_exponent(xs, [r[peer_key] for r in rows])}
        fitted.append(fit)
        loads = [load for r in rows for load in r["load_average"]]
        fixed = {"max_length": "pairs", "pairs": "max_length", "batch": "new_tokens", "new_tokens": "batch"}[
            axis["axis"]]
        title = {"dpo": "DPO step", "rm": "Reward-model step", "generate": "Generation"}[axis["workload"]]
        lines.append(f"**{title} against {axis['axis']}** ({fixed} {rows[0][fixed]}; 1-minute load average "
                     f"{min(loads):.2f}-{max(loads):.2f} during these points)\n")
        if axis["kind"] == "train":
            lines.append(f"| {axis['axis']} | mean pair tokens | jaxalign s/step | TRL s/step | TRL / jaxalign | "
                         "jaxalign peak RSS MB (step's share) | TRL peak RSS MB (step's share) | jaxalign compiles |")
            lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
            for x, r in zip(xs, rows):
                lines.append(f"| {x} | {r['pair_length_mean']:.0f} | {r['jaxalign_s']:.3f} | {r['trl_s']:.3f} | "
                             f"{r['trl_s'] / r['jaxalign_s']:.2f}x | {r['jaxalign_peak_rss_mb']:.0f} "
                             f"(+{step_memory(r, 'jaxalign'):.0f}) | {r['trl_peak_rss_mb']:.0f} "
                             f"(+{step_memory(r, 'trl'):.0f}) | {r['compiles']} |")
            lines.append(f"| growth exponent | | {fit['jaxalign_k']:.2f} | {fit['peer_k']:.2f} | | "
                         f"(+ {growth_exponent(xs, [step_memory(r, 'jaxalign') for r in rows]):.2f}) | "
                         f"(+ {growth_exponent(xs, [step_memory(r, 'trl') for r in rows]):.2f}) | |")
        else:
            lines.append(f"| {axis['axis']} | jaxalign s | HF generate s | HF / jaxalign | jaxalign tokens/s | "
                         "jaxalign compile s |")
            lines.append("|---:|---:|---:|---:|---:|---:|")
            for x, r in zip(xs, rows):
                lines.append(f"| {x} | {r['jaxalign_s']:.3f} | {r['hf_s']:.3f} | {r['hf_s'] / r['jaxalign_s']:.2f}x | "
                             f"{r['batch'] * r['new_tokens'] / r['jaxalign_s']:.0f} | {r['jaxalign_compile_s']:.1f} |")
            lines.append(f"| growth exponent | {fit['jaxalign_k']:.2f} | {fit['peer_k']:.2f} | | | |")
        lines.append("")
    return "\n".join(lines), fitted


def plot(fitted: Sequence[dict], path: Path, title: str) -> None:
    """Log-log time against each axis, both sides, exponents in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    rows = math.ceil(len(fitted) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(10, 3.4 * rows), squeeze=False)
    for ax, fit in zip(grid.flat, fitted):
        xs = [r[fit["axis"]] for r in fit["rows"]]
        for key, name, k, style in (("jaxalign_s", "jaxalign", fit["jaxalign_k"], "o-"),
                                    (fit["peer_key"], fit["peer"], fit["peer_k"], "s--")):
            ax.plot(xs, [r[key] for r in fit["rows"]], style, label=f"{name} (k = {k:.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(fit["axis"])
        ax.set_ylabel("seconds / step" if fit["kind"] == "train" else "seconds")
        ax.set_title({"dpo": "DPO step", "rm": "reward-model step", "generate": "generation"}[fit["workload"]]
                     + f" vs {fit['axis']}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(grid.flat)[len(fitted):]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main() -> None:
    common.start_like_the_jaxalign_command()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the reduced grid (default)")
    size.add_argument("--full", action="store_true", help="the whole grid: lengths 256-2048, pairs 4-32, "
                                                           "batch 1-64, new tokens 32-512")
    parser.add_argument("--only", nargs="+", choices=("dpo", "rm", "generate"), default=["dpo", "rm", "generate"])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=688)
    for name in ("lengths", "pairs", "batches", "new_tokens"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, nargs="+", help=f"override the grid's {name}")
    for name in ("warmup", "steps", "repeats"):
        parser.add_argument(f"--{name}", type=int, help=f"override the grid's {name}")
    parser.add_argument("--torch-threads", type=int, nargs="+", default=[1, 2],
                        help="generation: torch thread counts to try; transformers is credited with the fastest")
    parser.add_argument("--point-timeout", type=float, default=600, help="seconds one point may take")
    parser.add_argument("--out", help="append each point's JSON line here")
    parser.add_argument("--from", dest="source", help="report the points saved in this JSON-lines file; run nothing")
    parser.add_argument("--plot", type=Path, help="write the log-log plot (PNG) here")
    parser.add_argument("--markdown", type=Path, help="write the tables (markdown) here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops the runner: clean up on the way out
    args.grid = dict(GRIDS["full" if args.full else "quick"])
    args.grid.update({name: getattr(args, name) for name in args.grid if getattr(args, name, None) is not None})

    started = time.perf_counter()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if args.source:
        results = [json.loads(line) for line in open(args.source) if line.strip()]
    else:
        print(f"grid {'full' if args.full else 'quick'}: {args.grid}; {uptime}", flush=True)
        results = measure(args)
    text, fitted = report(results, args.grid, args.only)
    header = (f"{common.cpu_model()}, {os.cpu_count()} cores; " + (f"points read from {args.source}" if args.source else
              f"at start: {uptime}; at end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}"))
    print("\n" + header + "\n\n" + text)
    if args.markdown:
        args.markdown.write_text(header + "\n\n" + text)
    if args.plot and fitted:
        plot(fitted, args.plot, f"jaxalign vs TRL / HF generate, {common.cpu_model()}, {os.cpu_count()} cores")
    print(f"benchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
