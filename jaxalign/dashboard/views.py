"""Which charts the dashboard shows: sections of panels, each panel a few quantities from
``names.QUANTITIES``. A panel appears when any run logs any of its quantities, so one list
serves PPO, GRPO, reward models, the DPO family and SFT without asking a run its algorithm.
Everything a run logs that no panel claims is still drawn, under "Other metrics".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    quantities: tuple[str, ...]
    help: str = ""
    log_y: bool = False
    smooth: bool = True  # False for schedules (learning rate, KL coefficient): smoothing only lags them


@dataclass(frozen=True)
class Section:
    title: str
    panels: tuple[Panel, ...]


# The RL overview (reward and KL on one time axis, the reward-vs-KL trajectory, proxy vs
# gold) is drawn by figures.rl_overview from these quantities; the panels below follow it.
REWARD, GOLD, KL = "reward", "gold reward", "kl"

SECTIONS: tuple[Section, ...] = (
    Section("RL: rewards", (
        Panel("reward_sources", "Reward by source", ("reward source",),
              "Each reward source's mean before weighting; one source climbing alone is a cue to read its replies."),
        Panel("rlhf_reward", "Reward minus KL penalty", ("rlhf reward", "kl penalty"),
              "What PPO maximises: score - kl_coef * KL, and the penalty part of it."),
        Panel("reward_spread", "Reward spread", ("reward std", "groups with zero reward std"),
              "GRPO: groups whose replies all score the same give no gradient."),
        Panel("kl_coef", "KL coefficient", ("kl coefficient",),
              "Fixed, or moved by the adaptive controller toward target_kl.", smooth=False),
    )),
    Section("RL: policy", (
        Panel("length", "Reply length (tokens)", ("reply length",),
              "Length drifting up or down while the reward rises often means the reward pays for length."),
        Panel("truncation", "Truncated replies", ("truncated replies",), "Share of replies cut at max_new_tokens."),
        Panel("eos", "Replies that ended with EOS (per batch)", ("replies ending in EOS",)),
        Panel("entropy", "Entropy per token", ("entropy (per token)",),
              "Collapsing entropy: the policy is settling on a few replies."),
        Panel("entropy_sum", "Entropy summed over a reply", ("entropy (sum over reply)",)),
        Panel("clipping", "Clip fractions", ("policy clip fraction", "low clip", "high clip", "value clip fraction"),
              "Share of tokens whose probability ratio left the clip range."),
        Panel("approx_kl", "Approx KL of an update", ("approx KL of an update",),
              "How far one optimisation step moved the policy (not the KL to the reference)."),
        Panel("ppo_losses", "Policy loss", ("policy loss",)),
        Panel("value_loss", "Value loss", ("value loss",)),
        Panel("ratio", "Probability ratio", ("probability ratio",)),
    )),
    Section("Preferences: reward models and the DPO family", (
        Panel("accuracy", "Accuracy (chosen scored above rejected)", ("accuracy",)),
        Panel("margin", "Margin (chosen - rejected)", ("margin",)),
        Panel("chosen_rejected", "Chosen and rejected rewards", ("chosen", "rejected"),
              "DPO: both falling while the margin grows is common; chosen falling fast can hurt quality."),
        Panel("reward_scale", "Reward scale (mean, min, max over a batch)", ("mean reward", "min reward", "max reward"),
              "A reward model's scores drifting far from zero: consider reward centring (center_rewards_coefficient)."),
        Panel("logps", "Log-probs of chosen and rejected replies", ("log-prob chosen", "log-prob rejected")),
        Panel("logits", "Mean logits of chosen and rejected replies", ("logit chosen", "logit rejected")),
    )),
    Section("Training", (
        Panel("loss", "Loss", ("loss", "perplexity")),
        Panel("learning_rate", "Learning rate", ("learning rate",), smooth=False),
        Panel("grad_norm", "Gradient norm (before clipping)", ("grad norm",), log_y=True),
        Panel("throughput", "Throughput (tokens/s)", ("tokens/s", "tokens/s by phase")),
        Panel("step_time", "Seconds per step, by phase", ("seconds by phase",), log_y=True),
        Panel("flops", "Useful-FLOP share", ("useful-FLOP share",)),
        Panel("memory", "Memory", ("memory (GiB)",)),
    )),
)
