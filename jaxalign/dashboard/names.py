"""The one table of metric names the dashboard draws, and how a run's names are matched to it.

A *quantity* (``reward``, ``kl``, ...) lists the names different algorithms log it under, TRL's
vocabulary first. A run uses the first name it has. A name may be a glob (``rewards/*/mean``): then
every matching name is its own series (one per reward source). A new algorithm whose metric means
the same as an existing quantity adds its name here; the views need no change.

Names are matched after the split prefix the trainer's sinks write (``train/``, ``eval/``).
"""

from __future__ import annotations

import fnmatch
from typing import Iterable

QUANTITIES: dict[str, tuple[str, ...]] = {
    # RL: the reward being optimised and the KL to the reference policy
    "reward": ("objective/scores", "reward"),
    "gold reward": ("gold/reward", "objective/gold_scores"),
    "kl": ("objective/kl", "kl"),
    "kl coefficient": ("objective/kl_coef", "kl_coef", "beta"),
    "rlhf reward": ("objective/rlhf_reward",),
    "kl penalty": ("objective/non_score_reward",),
    "reward std": ("reward_std",),
    "groups with zero reward std": ("frac_reward_zero_std",),
    "reward source": ("rewards/*/mean",),
    "reply length": ("reply_length", "completions/mean_length"),
    "truncated replies": ("completions/clipped_ratio",),
    "replies ending in EOS": ("val/num_eos_tokens",),
    "entropy (sum over reply)": ("objective/entropy",),
    "entropy (per token)": ("policy/entropy_avg", "entropy"),
    "policy clip fraction": ("policy/clipfrac_avg", "clip_ratio/region_mean"),
    "low clip": ("clip_ratio/low_mean",),
    "high clip": ("clip_ratio/high_mean",),
    "value clip fraction": ("val/clipfrac_avg",),
    "approx KL of an update": ("policy/approxkl_avg",),
    "policy loss": ("loss/policy_avg",),
    "value loss": ("loss/value_avg",),
    "probability ratio": ("val/ratio",),
    # Preferences: reward models and the DPO family
    "accuracy": ("rewards/accuracies", "accuracy"),
    "margin": ("rewards/margins", "margin"),
    "mean reward": ("mean_reward", "rewards/mean"),
    "min reward": ("min_reward",),
    "max reward": ("max_reward",),
    "logit chosen": ("logits/chosen",),
    "logit rejected": ("logits/rejected",),
    "chosen": ("rewards/chosen",),
    "rejected": ("rewards/rejected",),
    "log-prob chosen": ("logps/chosen",),
    "log-prob rejected": ("logps/rejected",),
    # Every run
    "loss": ("loss",),
    "learning rate": ("learning_rate",),
    "grad norm": ("grad_norm",),
    "tokens/s": ("tokens_per_s",),
    "tokens/s by phase": ("tokens_per_s/*",),
    "seconds by phase": ("time/*_s", "step_time_s"),
    "useful-FLOP share": ("mfu", "perf/mfu", "flops/useful_share"),
    "memory (GiB)": ("memory/peak_gib", "memory/*_gib", "mem/*"),
    "perplexity": ("perplexity",),
}

SPLITS = ("train", "eval")


def split_name(column: str) -> tuple[str, str]:
    """``"eval/objective/kl"`` -> ``("eval", "objective/kl")``; an unprefixed name counts as train."""
    head, _, rest = column.partition("/")
    return (head, rest) if head in SPLITS and rest else ("train", column)


def resolve(quantity: str, names: Iterable[str]) -> list[tuple[str, str]]:
    """``(name, label)`` of each series a run logs ``quantity`` as (names without split prefix).

    The first alias the run has wins; a glob alias gives one series per match, labelled by the
    part the glob matched (``rewards/format/mean`` -> ``format``). A quantity that is not in
    the table stands for the metric of that name.
    """
    available = sorted(set(names))
    for alias in QUANTITIES.get(quantity, (quantity,)):
        if "*" in alias:
            prefix, _, suffix = alias.partition("*")
            matches = fnmatch.filter(available, alias)
            if matches:
                return [(m, m[len(prefix):len(m) - len(suffix)]) for m in matches]
        elif alias in available:
            return [(alias, quantity)]
    return []
