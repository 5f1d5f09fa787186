"""Shared pieces of the jaxalign-vs-TRL training benchmarks.

* ``shared_data()``: the HH-RLHF file and GPT-2 tokenizer under ``tests/data/real``
  (the benchmark exits 0 with a SKIP message when they are absent);
* ``hh_pairs()``: HH-RLHF rows split into prompt/chosen/rejected and filtered so
  that neither trainer truncates anything (both then see identical tokens);
* ``build_llama()``: a seeded random-init Hugging Face Llama folder both
  trainers load;
* ``JaxalignStepper``: runs ``jaxalign.trainer.Trainer``'s own loop body
  (``_optimizer_step``) one step at a time, blocking, timing and detecting
  recompiles; ``InterleavedTRLTimer``: a ``transformers`` callback that times
  each TRL step and runs one jaxalign step between TRL steps, so both see the
  same machine load;
* FLOP counting and a matmul-rate probe (the machine's float32 matmul FLOP/s);
* result printing: a table and one ``BENCHMARK_JSON {...}`` line.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JAXALIGN_SHARED_DATA", REPO / "tests" / "data" / "real"))
HH_FILE = "hh-rlhf-helpful-base-test.jsonl.gz"
GPT2_TOKENIZER = "gpt2-tokenizer.json"


# --------------------------------------------------------------------------- data


def shared_data(*names: str) -> dict[str, Path]:
    """Paths of files in ``tests/data/real``; exits 0 with a SKIP line when any is absent."""
    paths = {name: SHARED_DATA / name for name in names}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        print(f"SKIP: benchmark data not found: {', '.join(missing)} "
              f"(set JAXALIGN_SHARED_DATA to the folder holding {', '.join(names)})")
        sys.exit(0)
    return paths


def gpt2_tokenizer(path: Path):
    """The GPT-2 tokenizer as both sides use it: EOS = pad = ``<|endoftext|>`` (50256)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def hh_split(path: Path, counts: dict) -> Iterable[dict]:
    """HH-RLHF rows as ``{"prompt", "chosen", "rejected"}`` split with jaxalign's
    implicit-prompt rule, in file order; degenerate rows (no prompt, an empty
    reply, identical replies) are skipped and counted in ``counts``."""
    from jaxalign.data import implicit_prompt

    for row in read_jsonl_gz(path):
        counts["rows"] = counts.get("rows", 0) + 1
        prompt = implicit_prompt(row["chosen"], row["rejected"])
        chosen, rejected = row["chosen"][len(prompt):], row["rejected"][len(prompt):]
        if not prompt or not chosen.strip() or not rejected.strip() or chosen == rejected:
            counts["dropped_degenerate"] = counts.get("dropped_degenerate", 0) + 1
            continue
        yield {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def pair_length(tokenizer, pair: dict) -> int:
    """Tokens of the longer side, prompt + reply + EOS (what both trainers see)."""
    encode = tokenizer.backend_tokenizer.encode
    lengths = [len(encode(pair[key], add_special_tokens=False).ids) for key in ("prompt", "chosen", "rejected")]
    return lengths[0] + max(lengths[1], lengths[2]) + 1


def hh_pairs(path: Path, tokenizer, max_length: int, limit: int | None = None) -> tuple[list[dict], dict]:
    """HH-RLHF rows (``hh_split``), keeping only pairs where prompt + each reply + EOS
    fits ``max_length`` with one token to spare, so neither trainer truncates or
    drops anything. File order is kept (both trainers read without shuffling).
    Returns the rows and counts of what was dropped."""
    kept, counts = [], {"rows": 0, "dropped_degenerate": 0, "dropped_too_long": 0}
    for pair in hh_split(path, counts):
        if pair_length(tokenizer, pair) > max_length - 1:
            counts["dropped_too_long"] += 1
            continue
        kept.append(pair)
        if limit is not None and len(kept) >= limit:
            break
    counts["kept"] = len(kept)
    return kept, counts


_TURN = "\n\nHuman:"
CONTEXT_ROWS = 100  # pairs read ahead of the used ones, to lend their conversations as context


def hh_pairs_to_length(path: Path, tokenizer, max_length: int, count: int) -> tuple[list[dict], dict]:
    """``count`` HH-RLHF pairs lengthened towards ``max_length`` for scaling runs.

    The pairs that fit (``hh_pairs``) are read in file order up to ``count +
    CONTEXT_ROWS``; the last ``count`` of them are used, each with earlier
    conversation put in front of its prompt: whole Human/Assistant exchanges of
    the conversations (prompt + chosen reply) of the pairs before it, nearest
    first, added while prompt + longer reply + EOS still fits ``max_length - 1``
    tokens. The replies are untouched, so the pair's preference is the original
    one; only its context grows. Returns the pairs and counts, with
    ``mean_length``/``min_length``/``max_length`` in tokens (longer side)."""
    base, counts = hh_pairs(path, tokenizer, max_length, limit=count + CONTEXT_ROWS)
    if not base:
        raise ValueError(f"no HH-RLHF pair fits max_length {max_length}")
    exchanges = [[_TURN + part for part in (pair["prompt"] + pair["chosen"]).split(_TURN) if part]
                 for pair in base]
    encode = tokenizer.backend_tokenizer.encode
    start = max(len(base) - count, 0)
    out, lengths = [], []
    for i in range(start, start + count):
        pair = dict(base[i % len(base)])
        room = max_length - 1 - pair_length(tokenizer, pair)
        context: list[str] = []
        for back in range(1, len(base)):
            taken = False
            for exchange in reversed(exchanges[(i - back) % len(base)]):
                cost = len(encode(exchange, add_special_tokens=False).ids)
                if cost > room:
                    break
                context.insert(0, exchange)
                room -= cost
                taken = True
            if not taken:
                break
        longer = {**pair, "prompt": "".join(context) + pair["prompt"]}
        # BPE of a join can differ from the parts by a token: drop exchanges until it fits.
        while context and pair_length(tokenizer, longer) > max_length - 1:
            context.pop(0)
            longer = {**pair, "prompt": "".join(context) + pair["prompt"]}
        out.append(longer)
        lengths.append(pair_length(tokenizer, longer))
    counts.update(kept=len(out), mean_length=statistics.fmean(lengths), min_length=min(lengths),
                  max_length=max(lengths))
    return out, counts


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


# -------------------------------------------------------------------------- model


def build_llama(path: Path, head: str, seed: int = 0, **config) -> dict:
    """Writes a random-init HF Llama (``head`` "causal_lm" or "score": a
    ``LlamaForSequenceClassification`` with one label) to ``path``, seeded.
    Returns the config dict."""
    import torch
    import transformers

    torch.manual_seed(seed)
    llama_config = transformers.LlamaConfig(**config)
    if head == "score":
        llama_config.num_labels = 1
        model = transformers.LlamaForSequenceClassification(llama_config)
    else:
        model = transformers.LlamaForCausalLM(llama_config)
    model.save_pretrained(path)
    return llama_config.to_dict()


def llama_params(cfg: dict) -> dict[str, int]:
    """Parameter counts of a Llama config: ``non_embedding`` (the layers and final
    norm), ``embedding`` (input table), ``lm_head`` (the untied projection, 0 if tied)."""
    h, i, layers, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    attention = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2
    per_layer = attention + 3 * h * i + 2 * h
    return {
        "non_embedding": layers * per_layer + h,
        "embedding": vocab * h,
        "lm_head": 0 if cfg.get("tie_word_embeddings") else vocab * h,
    }


def useful_flops(non_embedding: int, hidden: int, vocab: int, tokens: int, completion_tokens: int,
                 reference: bool, lm_head: bool) -> float:
    """FLOPs of the work that carries information (attention's T^2 terms excluded):

      policy forward + backward    6 * N * T
      reference forward            2 * N * T                (if ``reference``)
      vocab projection, policy     6 * hidden * vocab * Tc  (if ``lm_head``)
      vocab projection, reference  2 * hidden * vocab * Tc  (if both)

    N = non-embedding parameters, T = real (non-padding) tokens with a pair's
    prompt counted once, Tc = completion tokens (chosen + rejected).
    """
    flops = 6.0 * non_embedding * tokens
    if reference:
        flops += 2.0 * non_embedding * tokens
    if lm_head:
        flops += 6.0 * hidden * vocab * completion_tokens
        if reference:
            flops += 2.0 * hidden * vocab * completion_tokens
    return flops


# ------------------------------------------------------------------------- timing


def matmul_rate(n: int = 2048, repeats: int = 7) -> float:
    """This machine's float32 matmul FLOP/s under jax: best of ``repeats`` jitted n x n dots."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = min(timed(lambda: dot(a, b).block_until_ready()) for _ in range(repeats))
    return 2.0 * n ** 3 / best


def torch_matmul_rate(n: int = 2048, repeats: int = 7) -> float:
    """The same probe under torch (what TRL's matmuls run on)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator)
    b = torch.randn(n, n, generator=generator)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n ** 3 / best


def dot_library() -> str:
    """Which library XLA:CPU runs a float32 dot on, read from the compiled HLO: "ynnpack"
    (jax 0.10's default), "xnnpack", "onednn", or "xla dot" (XLA's own Eigen-backed dot)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((256, 256), jnp.float32)
    hlo = jax.jit(jnp.dot).lower(a, a).compile().as_text().lower()
    for marker, name in (("__ynn_fusion", "ynnpack"), ("__xnn_fusion", "xnnpack"), ("onednn", "onednn")):
        if marker in hlo:
            return name
    return "xla dot"


def probe_rates() -> dict[str, float]:
    """Both matmul probes, FLOP/s."""
    return {"jax": matmul_rate(), "torch": torch_matmul_rate()}


def best_rates(*probes: dict[str, float]) -> dict[str, float]:
    """Per-library best over several probes (the machine's capability when least disturbed)."""
    return {key: max(probe[key] for probe in probes) for key in probes[0]}


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stats(values: Sequence[float]) -> dict[str, float]:
    values = list(values)
    if not values:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"n": len(values), "mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


def batch_census(batch: dict) -> dict[str, int]:
    """Token accounting of one jaxalign packed batch (host numpy)."""
    import numpy as np

    rows, length = batch["input_ids"].shape
    width = batch["target_index"].shape[1] if "target_index" in batch else 0  # reward batches have no targets
    return {
        "rows": rows, "length": length, "target_slots": width,
        "tile_pairs": batch["tile_pairs"].shape[1] if "tile_pairs" in batch else 0,
        "slots": rows * length,  # token positions pushed through the decoder
        "tokens": int(np.count_nonzero(batch["segment_ids"])),  # real tokens, prompt once per pair
        "completion_tokens": int(np.count_nonzero(batch["target_segment"])) if width else 0,
        "lm_head_slots": batch["target_index"].shape[0] * width if width else 0,  # positions the vocab projection runs on
        "pairs": int(batch["example_mask"].sum()),
    }


class _RecordingIterator:
    """Wraps the Grain iterator: records each batch's census, and how long the
    loop waited for it (host-side tokenizing/packing not hidden by prefetch)."""

    def __init__(self, inner, sink: list):
        self.inner, self.sink = inner, sink

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.inner)
        self.sink.append({**batch_census(batch), "fetch_seconds": time.perf_counter() - start})
        return batch


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_seconds = [0.0]


def _on_jax_event(name: str, seconds: float, **kwargs) -> None:
    if name in _COMPILE_EVENTS:
        _compile_seconds[0] += seconds


def compile_clock() -> float:
    """Seconds jax has spent tracing, lowering and compiling in this process so far."""
    if not getattr(compile_clock, "registered", False):
        import jax

        jax.monitoring.register_event_duration_secs_listener(_on_jax_event)
        compile_clock.registered = True
    return _compile_seconds[0]


def minor_faults() -> int:
    """This process's minor page faults so far: memory touched for the first time. A
    reward-model step that makes its temp buffer afresh instead of reusing one faults
    ~230k pages, 1.6 s more than the same step without (docs/benchmarks.md, session 21)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class JaxalignStepper:
    """Drives a ``jaxalign.trainer.Trainer`` one optimizer step at a time through
    its own loop body (``Trainer._optimizer_step``: next Grain batch ->
    ``shard_batch`` -> the jitted, donated train step -> metrics window), blocks
    on the new state, and records per step: wall seconds, seconds jax spent
    tracing + compiling inside it (``jax.monitoring`` events, all jitted
    functions the step touches), whether the batch has a shape ``(R, L, C)``
    not seen before (each one compiles the train step), and the batch's token
    census."""

    def __init__(self, trainer):
        from jaxalign.trainer import _MetricsWindow

        compile_clock()
        self.trainer = trainer
        self.records: list[dict] = []
        self._census: list[dict] = []
        self._iterator = _RecordingIterator(trainer.train_data.iterator(), self._census)
        self._window = _MetricsWindow()
        self._shapes: set = set()

    def compiles(self) -> int:
        return self.trainer.train_step._cache_size()

    def step(self) -> dict:
        import jax

        compile_before = compile_clock()
        faults_before = minor_faults()
        start = time.perf_counter()
        if not self.trainer._optimizer_step(self._iterator, self._window):
            raise RuntimeError("jaxalign: training data ran out")
        jax.block_until_ready(self.trainer.state)
        seconds = time.perf_counter() - start
        compile_s = compile_clock() - compile_before
        census = self._census[-1]
        shape = (census["rows"], census["length"], census["target_slots"], census["tile_pairs"])
        record = {"seconds": seconds, "compile_seconds": compile_s, "run_seconds": seconds - compile_s,
                  "minor_faults": minor_faults() - faults_before,
                  "compiled": shape not in self._shapes, **census}
        self._shapes.add(shape)
        self.records.append(record)
        return record


def make_interleaved_timer(jaxalign_step: Callable[[], Any] | None):
    """A ``TrainerCallback`` that times every TRL optimizer step (from the end of
    the previous one, so TRL's data loading, forward, backward and optimizer all
    count) and then, outside the TRL timing, runs ``jaxalign_step()`` once."""
    from transformers import TrainerCallback

    class InterleavedTRLTimer(TrainerCallback):
        def __init__(self):
            self.step_seconds: list[float] = []
            self.step_faults: list[int] = []
            self._mark = self._faults = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._mark, self._faults = time.perf_counter(), minor_faults()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_seconds.append(time.perf_counter() - self._mark)
            self.step_faults.append(minor_faults() - self._faults)
            if jaxalign_step is not None:
                jaxalign_step()
            self._mark, self._faults = time.perf_counter(), minor_faults()

    return InterleavedTRLTimer()


class RecordingCollator:
    """Wraps TRL's collator: records the padded shape and token counts of every batch."""

    def __init__(self, inner, sink: list):
        self.inner, self.sink = inner, sink

    def __call__(self, features):
        out = self.inner(features)
        ids = out["input_ids"]
        census = {"sequences": int(ids.shape[0]), "length": int(ids.shape[1]), "slots": int(ids.numel()),
                  "tokens": int(out["attention_mask"].sum())}
        if "completion_mask" in out:
            census["completion_tokens"] = int(out["completion_mask"].sum())
        self.sink.append(census)
        return out


def quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("transformers", "trl", "datasets", "absl", "jax", "jaxalign", "orbax", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


# ------------------------------------------------------------------------ reports


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def start_like_the_jaxalign_command() -> None:
    """Restarts this benchmark the way the ``jaxalign`` command starts (``jaxalign.host_malloc``):
    with the glibc malloc settings that let XLA:CPU reuse its step buffers. A side-by-side run
    shares one process, so the peer runs under them too; ``machine()`` records them. Call it
    first in ``main``: the process is replaced."""
    from jaxalign.host_malloc import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()


# The 1-minute load average when the benchmark started, before its own work: how busy the machine was.
LOAD_AT_START = os.getloadavg()[0]


def machine() -> dict[str, Any]:
    import jax
    import torch

    from jaxalign.host_malloc import describe

    return {"cpu": cpu_model(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax_dot_library": dot_library(),
            "host_malloc": describe().removeprefix("host malloc: "),
            "cores": os.cpu_count(), "load_average_at_start": round(LOAD_AT_START, 2),
            "jax": jax.__version__, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in text)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    for row in text:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))


def emit_json(name: str, payload: dict) -> None:
    print("BENCHMARK_JSON " + json.dumps({"benchmark": name, **payload}, default=float))


def trace_summary(trace_dir: Path | str, steps: int, top: int = 25) -> list[dict]:
    """The ``top`` operations of a ``jax.profiler`` trace (written with ``create_perfetto_trace=True``)
    by time, per step: XLA ops and GPU kernels, numbered copies (``fusion.12``) counted as one
    name, Python frames left out. Each row: ``where`` (the trace's process: host, or a GPU
    stream), ``name``, ``ms_per_step`` (summed over threads and streams, so host rows can add up
    to more than the wall time), ``calls_per_step``."""
    import re
    from collections import Counter

    found = sorted(Path(trace_dir).glob("**/*.trace.json.gz"))
    if not found:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
    with gzip.open(found[-1], "rt") as handle:
        trace = json.load(handle)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    seconds, calls = Counter(), Counter()
    for event in events:
        if event.get("ph") != "X" or event["name"].startswith("$"):
            continue
        key = (processes.get(event.get("pid"), "?"), re.sub(r"[.\d]+$", "", event["name"]))
        seconds[key] += event.get("dur", 0)
        calls[key] += 1
    return [{"where": where, "name": name, "ms_per_step": micros / 1e3 / steps, "calls_per_step": calls[where, name] / steps}
            for (where, name), micros in seconds.most_common(top)]
