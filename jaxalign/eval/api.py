"""``evaluate(target, spec)``: resolve the target, load what the evaluation needs, run the one
evaluator its kind calls for, write ``RUN_DIR/eval/NAME.json`` and publish to the sinks."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping

from jaxalign.eval import models
from jaxalign.eval.data import load_set
from jaxalign.eval.output import open_run_sinks, publish, write_result
from jaxalign.eval.pairwise import implicit_reward_eval, reward_model_eval
from jaxalign.eval.policy import build_rewards, policy_eval
from jaxalign.eval.spec import EvalError, EvalSpec, input_digests
from jaxalign.eval.target import POLICY, REWARD_MODEL, Target, resolve
from jaxalign.rl.reward_model import same_vocabulary

DEFAULT_BETA = 0.1
NO_REFERENCE = ("none", "null", "")


def evaluate(target: str | os.PathLike, spec: EvalSpec | Mapping[str, Any] | None = None, *,
             sinks: Any = None, write: bool = True) -> dict[str, Any]:
    """Evaluates ``target`` (a run dir, an exported model folder or a run config) as ``spec`` says
    and returns the result (the dict written to ``eval/NAME.json``: ``name``, ``kind``,
    ``target``, ``step``, ``metrics``, ``spec`` (the EvalSpec's fields) and the kind's extras). With ``write`` the file is written
    into the target's run dir (or ``spec.output_dir``) and the metrics go to ``sinks`` (default:
    the run's configured sinks). Bad input raises ``EvalError`` with one line."""
    return evaluate_resolved(resolve(target), EvalSpec.of(spec), sinks=sinks, write=write)


def evaluate_resolved(resolved: Target, spec: EvalSpec, *, sinks: Any = None, write: bool = True) -> dict[str, Any]:
    """``evaluate`` once the target is resolved (the trainer hands over its own ``Target``)."""
    started = time.monotonic()
    fields = dataclasses.asdict(spec)
    # The data files and model folders as they are when the evaluation reads them.
    inputs = input_digests(fields, str(resolved.model_dir))
    result = _run(resolved, spec)
    result = {"name": spec.name, "kind": result.pop("kind"), "target": str(resolved.model_dir),
              "step": spec.step if spec.step is not None else resolved.step,
              "seconds": round(time.monotonic() - started, 2), **result,
              # What was measured: a rerun with another spec, or on a data file since changed, is told apart.
              "spec": fields, "inputs": inputs}
    if write:
        folder = resolved.run_dir if resolved.run_dir is not None else spec.output_dir
        if folder is not None:
            result["path"] = str(write_result(folder, result))
            _publish(result, Path(folder), resolved, sinks)
        elif sinks is not None:
            publish(sinks, result)
    return result


def _publish(result: dict, folder: Path, resolved: Target, sinks: Any) -> None:
    if sinks is not None:
        publish(sinks, result)
        return
    opened = open_run_sinks(folder, resolved.config)
    try:
        publish(opened, result)
    finally:
        opened.close()


def kind_of(resolved: Target, spec: EvalSpec) -> str:
    if spec.kind != "auto":
        return spec.kind
    return "reward_model" if resolved.kind == REWARD_MODEL else "policy"


def _run(resolved: Target, spec: EvalSpec) -> dict[str, Any]:
    kind = kind_of(resolved, spec)
    if kind == "reward_model":
        reward_model = models.load(resolved.model_dir, REWARD_MODEL, "the evaluated reward model")
        pairs = load_set(spec.pairs, resolved.config, reward_model.tokenizer, "preference", "eval.pairs")
        return reward_model_eval(reward_model, pairs, spec)
    policy = models.load(resolved.model_dir, POLICY, "the evaluated policy")
    reference_dir = _reference_dir(resolved, spec)
    if kind == "implicit_reward":
        if reference_dir is None:
            raise EvalError("eval: implicit_reward needs a reference policy: set eval.reference (the model the "
                            "DPO run started from)")
        reference = models.load(reference_dir, POLICY, "eval.reference")
        if not same_vocabulary(reference.tokenizer, policy.tokenizer):
            raise EvalError(f"eval: implicit_reward: the reference {reference_dir} has another tokenizer than the "
                            f"policy; the implicit reward compares log-probs of the same tokens")
        pairs = load_set(spec.pairs, resolved.config, policy.tokenizer, "preference", "eval.pairs")
        return implicit_reward_eval(policy, reference, pairs, spec, _beta(resolved, spec))
    prompts = load_set(spec.prompts, resolved.config, policy.tokenizer, "prompt", "eval.prompts", spec.max_prompts)
    sample_texts = [example.prompt for example in prompts.examples[:64]]
    rewards = build_rewards(spec.rewards, policy, sample_texts)
    reference = models.load(reference_dir, POLICY, "eval.reference") if reference_dir is not None else None
    judge = None
    judge_entry = spec.judge if spec.judge is not None else _first_model(spec.rewards)
    if reference is not None and judge_entry is not None:
        judge = build_rewards([judge_entry], policy, sample_texts, "eval.judge")
    result = policy_eval(policy, prompts, spec, rewards=rewards, reference=reference, judge=judge)
    if judge is None and reference is not None:
        result.setdefault("notes", []).append("no win rate: give eval.judge (a reward-model folder) or a model "
                                              "reward source")
    if judge_entry is not None and reference is None:
        result.setdefault("notes", []).append("no win rate or KL: no reference policy (eval.reference)")
    return result


def _reference_dir(resolved: Target, spec: EvalSpec) -> str | None:
    if spec.reference is not None:
        return None if str(spec.reference).lower() in NO_REFERENCE else spec.reference
    start = resolved.start_model()
    return start if start is not None and Path(start).is_dir() else None


def _first_model(entries: Any) -> Any:
    """The first reward-model source of ``eval.rewards`` (the default win-rate judge)."""
    from jaxalign.rl import parse_reward_specs

    if not entries:
        return None
    for spec in parse_reward_specs(entries, where="eval.rewards"):
        if spec.kind == "model" and spec.role == "train":
            return {"model": spec.target}
    return None


def _beta(resolved: Target, spec: EvalSpec) -> float:
    if spec.beta is not None:
        return float(spec.beta)
    loss = getattr(resolved.config, "loss", None) if resolved.config is not None else None
    beta = getattr(loss, "beta", None)
    return float(beta) if isinstance(beta, (int, float)) else DEFAULT_BETA
