"""Policy evaluation on a prompt set through the rollout layer: n sampled replies per prompt,
their reward under the evaluation's reward sources (gold-role ones logged beside), win rate
against a reference policy's replies judged by a reward model, sequence KL to the reference,
lengths, truncation, and task checkers.

Prompts stream in batches of ``spec.batch_size``: only one batch's replies are on the device
at a time (the teacher-forced pass computes log-probs without ``[R, N, V]`` logits), and only
per-reply numbers and texts are kept on the host.

Standard errors treat prompts as the independent units (``stats.mean_and_se`` with groups).
KL is the mean over sampled replies of sum_t log pi(y_t) - log pi_ref(y_t), at the sampling
temperature (the true sequence KL at temperature 1, the default)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxalign.eval import stats
from jaxalign.eval.checkers import get_checker
from jaxalign.eval.data import EvalSet
from jaxalign.eval.models import Loaded
from jaxalign.eval.spec import EvalError, EvalSpec
from jaxalign.generation import SamplingConfig
from jaxalign.rl import RewardSet, RolloutEngine, SourceContext, parse_reward_specs, prompt_batch, scoring_inputs
from jaxalign.rl.record import host_array
from jaxalign.rl.reward_model import RewardModelError, same_vocabulary

SAMPLES_KEPT = 16  # replies written into the result for people to read


@dataclasses.dataclass
class _Collected:
    """Per-reply values over every batch (host side)."""

    group: list = dataclasses.field(default_factory=list)
    reward: list = dataclasses.field(default_factory=list)
    reward_valid: list = dataclasses.field(default_factory=list)
    gold: list = dataclasses.field(default_factory=list)
    gold_valid: list = dataclasses.field(default_factory=list)
    kl: list = dataclasses.field(default_factory=list)
    wins: list = dataclasses.field(default_factory=list)
    length: list = dataclasses.field(default_factory=list)
    truncated: list = dataclasses.field(default_factory=list)
    rows: list = dataclasses.field(default_factory=list)
    completions: list = dataclasses.field(default_factory=list)
    source_scores: dict = dataclasses.field(default_factory=dict)

    def array(self, name: str) -> np.ndarray:
        values = getattr(self, name)
        return np.concatenate(values) if values else np.zeros(0)


def build_rewards(entries: Any, policy: Loaded, sample_texts: list[str], where: str = "eval.rewards") -> RewardSet | None:
    """The evaluation's reward sources (``ppo.rewards`` syntax); a reward model whose tokenizer
    differs from the policy's re-tokenizes the text (jaxalign.rl.reward_model)."""
    if not entries:
        return None
    context = SourceContext(tokenizer=policy.tokenizer, sample_texts=lambda: sample_texts)
    try:
        return RewardSet.build(parse_reward_specs(entries, where=where), context)
    except RewardModelError as err:
        raise EvalError(f"{where}: {err}") from None
    except (ValueError, FileNotFoundError) as err:
        message = str(err)
        raise EvalError(message if message.startswith(where) else f"{where}: {message}") from None


def policy_eval(policy: Loaded, prompts: EvalSet, spec: EvalSpec, *, rewards: RewardSet | None = None,
                reference: Loaded | None = None, judge: RewardSet | None = None) -> dict[str, Any]:
    """Samples ``spec.num_generations`` replies per prompt and measures them (see the module doc).

    rewards: sources for ``reward`` (train role) and ``gold/reward`` (gold role); reference: for
    ``kl`` (needs the policy's tokenizer) and, with ``judge`` (one reward source), ``win_rate``."""
    sampling = SamplingConfig(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, top_k=spec.top_k,
                              top_p=spec.top_p, stop_token_ids=(int(policy.tokenizer.eos_token_id),),
                              pad_token_id=int(policy.tokenizer.pad_token_id or 0), slots=spec.generation_slots)
    notes: list[str] = []
    kl_reference = reference
    if reference is not None and not same_vocabulary(reference.tokenizer, policy.tokenizer):
        notes.append(f"no KL: the reference {reference.where} has another tokenizer than the policy")
        kl_reference = None
    engine = RolloutEngine((policy.graphdef, policy.params), policy.tokenizer, sampling, rewards=rewards,
                           num_generations=spec.num_generations,
                           reference_graphdef=kl_reference.graphdef if kl_reference is not None else None)
    reference_engine = None
    if reference is not None and judge is not None:
        ref_sampling = dataclasses.replace(sampling, stop_token_ids=(int(reference.tokenizer.eos_token_id),),
                                           pad_token_id=int(reference.tokenizer.pad_token_id or 0))
        reference_engine = RolloutEngine((reference.graphdef, reference.params), reference.tokenizer, ref_sampling,
                                         num_generations=spec.num_generations)
    key = jax.random.key(spec.seed)
    out = _Collected()
    examples = prompts.examples
    # One prompt width for every batch (the longest prompt's, capped), so the sampler compiles once.
    policy_width = _prompt_width(policy.tokenizer, examples, spec.max_prompt_length)
    reference_width = _prompt_width(reference.tokenizer, examples, spec.max_prompt_length) if reference_engine else 0
    for batch_index, start in enumerate(range(0, len(examples), spec.batch_size)):
        ids = list(range(start, min(start + spec.batch_size, len(examples))))
        texts = [examples[i].prompt for i in ids]
        batch = prompt_batch(policy.tokenizer, texts, max_prompt_length=spec.max_prompt_length, slots=spec.batch_size,
                             pad_to_multiple=policy_width)
        batch["example_id"] = batch["example_id"] + start  # ids index the whole set (its rows' columns)
        batch_key = jax.random.fold_in(key, batch_index)
        rollout = engine(policy.params, batch, batch_key, rows=prompts.lookup,
                         ref_params=kl_reference.params if kl_reference is not None else None)
        _collect(out, rollout, prompts, start)
        if reference_engine is not None:
            ref_batch = prompt_batch(reference.tokenizer, texts, max_prompt_length=spec.max_prompt_length,
                                     slots=spec.batch_size, pad_to_multiple=reference_width)
            ref_batch["example_id"] = ref_batch["example_id"] + start
            ref_rollout = reference_engine.sample(reference.params, ref_batch, jax.random.fold_in(batch_key, 1),
                                                  prompts.lookup)
            mine = _judge(judge, rollout)
            theirs = _judge(judge, ref_rollout)
            out.wins.append(stats.win_outcomes(mine, theirs))
    return _summarise(out, spec, rewards, notes)


def _prompt_width(tokenizer, examples, limit: int) -> int:
    """The padded width of the longest prompt (+ BOS), at most ``limit`` rounded up to 16."""
    longest = max(len(tokenizer(example.prompt, add_special_tokens=False)["input_ids"]) for example in examples) + 1
    return -(-min(longest, limit) // 16) * 16


def _judge(judge: RewardSet, rollout) -> np.ndarray:
    scores, valid = judge.score(scoring_inputs(rollout))
    return judge.total(scores, valid)[0]


def _collect(out: _Collected, rollout, prompts: EvalSet, start: int) -> None:
    host = rollout.host()
    real = np.flatnonzero(host["row_mask"] > 0)
    out.group.append(host["example_id"][real])
    out.length.append(host["lengths"][real].astype(np.float64))
    out.truncated.append(host["truncated"][real].astype(np.float64))
    out.completions.extend(rollout.completions[r] for r in real)
    out.rows.extend(prompts.rows[int(host["example_id"][r])] for r in real)
    if "rewards" in host:
        out.reward.append(host["rewards"][real])
        out.reward_valid.append(host["reward_valid"][real])
        gold, gold_valid = rollout.gold(host)
        if gold is not None:
            out.gold.append(gold[real])
            out.gold_valid.append(gold_valid[real])
        for index, name in enumerate(rollout.sources):
            column = out.source_scores.setdefault(name, ([], []))
            column[0].append(host["scores"][real, index])
            column[1].append(host["score_valid"][real, index])
    if "ref_logps" in host:
        out.kl.append((host["logps"][real] - host["ref_logps"][real]).sum(axis=1).astype(np.float64))


def _summarise(out: _Collected, spec: EvalSpec, rewards: RewardSet | None, notes: list[str]) -> dict[str, Any]:
    groups = out.array("group")
    metrics: dict[str, float] = {"prompts": float(len(np.unique(groups))), "replies": float(len(groups))}
    metrics["mean_length"], metrics["mean_length_se"] = stats.mean_and_se(out.array("length"), groups)
    metrics["truncation_rate"] = float(out.array("truncated").mean())

    def add(name: str, values: np.ndarray, valid: np.ndarray | None = None) -> None:
        keep = np.ones(len(values), bool) if valid is None else valid.astype(bool)
        if keep.any():
            metrics[name], metrics[f"{name}_se"] = stats.mean_and_se(values[keep], groups[keep])

    if out.reward:
        add("reward", out.array("reward"), out.array("reward_valid"))
        for name, (values, valid) in out.source_scores.items():
            keep = np.concatenate(valid).astype(bool)
            if keep.any():
                metrics[f"rewards/{name}/mean"] = float(np.concatenate(values)[keep].mean())
    if out.gold:
        gold_valid = out.array("gold_valid")
        if gold_valid.any():
            metrics["gold/reward"], metrics["gold/reward_se"] = stats.mean_and_se(
                out.array("gold")[gold_valid.astype(bool)], groups[gold_valid.astype(bool)])
    if out.kl:
        add("kl", out.array("kl"))
    if out.wins:
        add("win_rate", out.array("wins"))
    for name in spec.checkers:
        checked = get_checker(name)(out.rows, out.completions)
        metrics.update({f"{name}/{key}": float(value) for key, value in checked.items()})
    samples = [{"prompt": row["prompt"], "completion": completion}
               for row, completion in zip(out.rows[:SAMPLES_KEPT], out.completions[:SAMPLES_KEPT])]
    result: dict[str, Any] = {"kind": "policy", "metrics": metrics, "samples": samples}
    if notes:
        result["notes"] = notes
    return result
