"""The pipeline's evaluation of one exported policy: the one place that changes when
``jaxalign eval`` (``jaxalign.eval.evaluate``) lands.

``evaluate_policy(target, spec)`` takes the same spec fields as ``jaxalign.eval``'s policy
evaluation (``prompts``, ``num_generations``, ``max_new_tokens``, ``temperature``,
``batch_size``, ``max_prompts``, ``rewards``, ``reference``, ``checkers``, ``seed``) and
returns the same shape, ``{"name", "kind", "target", "metrics": {...}}``, with its metric
names: ``reward``, ``reward_se``, ``kl``, ``kl_se``, ``mean_length``, ``truncation_rate``,
``prompts``, ``replies`` and each checker's metrics under its name
(``alignment/decline_rate``, ``alignment/help_rate``, ...).

Replies are sampled by the rollout layer (``RolloutEngine``) so that scores and
teacher-forced log-probs come from the code PPO trains with. ``kl`` is the sequence KL
estimate ``mean over replies of sum_t (log pi - log pi_ref)`` at the sampling temperature
(T = 1 for greedy replies, where it is not a KL of the sampling distribution: use a
sampled evaluation for KL).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

EVAL_DEFAULTS: dict[str, Any] = {
    "name": "eval", "prompts": None, "num_generations": 1, "max_new_tokens": 64, "temperature": 1.0,
    "batch_size": 100, "max_prompts": None, "rewards": [], "reference": None, "checkers": [], "seed": 0,
}


def _alignment_checker(rows: Sequence[dict], completions: Sequence[str]) -> dict[str, float]:
    from jaxalign.tasks.alignment import task_metrics

    return task_metrics(rows, completions)


# Rule-based checkers by name: (prompt rows, one reply per row) -> metrics.
CHECKERS: dict[str, Callable[[Sequence[dict], Sequence[str]], dict[str, float]]] = {"alignment": _alignment_checker}


def eval_spec(spec: Mapping[str, Any], where: str = "eval") -> dict[str, Any]:
    """``spec`` with defaults filled in; unknown keys and a missing prompt set are errors (ValueError)."""
    unknown = sorted(set(spec) - set(EVAL_DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(EVAL_DEFAULTS)}")
    full = {**EVAL_DEFAULTS, **spec}
    if not full["prompts"]:
        raise ValueError(f"{where}: 'prompts' (a prompt set, e.g. builtin:alignment_prompts#eval) is required")
    for name in full["checkers"]:
        if name not in CHECKERS:
            raise ValueError(f"{where}: unknown checker {name!r}; known: {', '.join(CHECKERS)}")
    return full


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return float("nan"), float("nan")
    se = float(np.std(values, ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0
    return float(np.mean(values)), se


def evaluate_policy(target: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Generates on ``spec['prompts']`` with the policy exported in folder ``target`` and scores
    the replies (reward sources, KL to ``reference``, checkers). Returns the result dict."""
    from jaxalign.data.packing import pack_prompts
    from jaxalign.data.tokenize import load_tokenizer
    from jaxalign.generation import SamplingConfig
    from jaxalign.generation.jsonl import PROMPT_LENGTH_MULTIPLE, read_prompts
    from jaxalign.models import load_pretrained
    from jaxalign.rl.rollout import RolloutEngine
    from jaxalign.rl.sources import RewardSet, SourceContext, parse_reward_specs
    from jaxalign.sharding import MeshConfig, batch_divisor, make_mesh

    spec = eval_spec(spec)
    mesh = make_mesh(MeshConfig(data=-1))
    tokenizer = load_tokenizer(str(target))
    policy = load_pretrained(target, head="causal_lm", mesh=mesh)
    graphdef, params = nnx.split(policy)
    max_prompt_length = policy.config.max_position_embeddings - spec["max_new_tokens"]
    raw_rows, examples = read_prompts(spec["prompts"], tokenizer, max_prompt_length)
    rows = [dict(row.value) for row in raw_rows]
    if spec["max_prompts"]:
        rows, examples = rows[:spec["max_prompts"]], examples[:spec["max_prompts"]]

    rewards = None
    if spec["rewards"]:
        context = SourceContext(tokenizer, mesh=mesh, sample_texts=lambda: [row["prompt"] for row in rows[:16]])
        rewards = RewardSet.build(parse_reward_specs(spec["rewards"], where="eval.rewards"), context)
    ref_graphdef = ref_params = None
    if spec["reference"] and str(spec["reference"]) != str(target):
        ref_graphdef, ref_params = nnx.split(load_pretrained(spec["reference"], head="causal_lm", mesh=mesh))

    eos = () if tokenizer.eos_token_id is None else (int(tokenizer.eos_token_id),)
    pad = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0
    sampling = SamplingConfig(spec["max_new_tokens"], spec["temperature"], stop_token_ids=eos, pad_token_id=pad)
    n = int(spec["num_generations"])
    engine = RolloutEngine((graphdef, params), tokenizer, sampling, rewards=rewards, num_generations=n,
                           reference_graphdef=ref_graphdef, mesh=mesh)
    rng = jax.random.key(spec["seed"])
    size = int(spec["batch_size"])
    completions: list[str] = []
    reward, kl, length, truncated = [], [], [], []
    for index, start in enumerate(range(0, len(examples), size)):
        chunk = examples[start:start + size]
        prompts = pack_prompts(chunk, slots=size, pad_to_multiple=PROMPT_LENGTH_MULTIPLE,
                               row_multiple=batch_divisor(mesh))
        rollout = engine(params, prompts, jax.random.fold_in(rng, index), ref_params=ref_params)
        host = rollout.host()
        real = np.flatnonzero(host["row_mask"] > 0)  # prompt p's replies are rows p*n .. p*n+n-1
        completions += [rollout.completions[r] for r in real]
        length.append(host["lengths"][real])
        truncated.append(host["truncated"][real])
        if rewards is not None:
            reward.append(host["rewards"][real])
        if ref_params is not None:
            kl.append(np.sum(host["logps"] - host["ref_logps"], axis=1)[real])
    metrics: dict[str, float] = {"prompts": float(len(rows)), "replies": float(len(completions))}
    if rewards is not None:
        metrics["reward"], metrics["reward_se"] = _mean_se(np.concatenate(reward))
    if ref_params is not None:
        metrics["kl"], metrics["kl_se"] = _mean_se(np.concatenate(kl))
    elif spec["reference"]:
        metrics["kl"], metrics["kl_se"] = 0.0, 0.0  # the reference itself
    metrics["mean_length"] = float(np.mean(np.concatenate(length)))
    metrics["truncation_rate"] = float(np.mean(np.concatenate(truncated)))
    repeated = [row for row in rows for _ in range(n)]
    for name in spec["checkers"]:
        metrics.update({f"{name}/{key}": value for key, value in CHECKERS[name](repeated, completions).items()})
    return {"name": spec["name"], "kind": "policy", "target": str(target), "metrics": metrics,
            "samples": [{"prompt": row["prompt"], "completion": reply} for row, reply in
                        zip(repeated[:: max(len(repeated) // 8, 1)], completions[:: max(len(repeated) // 8, 1)])]}
