"""Pairwise preference losses: the DPO family and the reference-free ones.

Each takes a ``PreferenceInputs`` (arrays ``[N]``, summed log-probs) and a
``LossConfig``, and returns the per-example loss ``[N]`` (or ``LossTerms``).
Notation, per example:

    a = policy_chosen - ref_chosen          (chosen log-ratio)
    b = policy_rejected - ref_rejected      (rejected log-ratio)
    logits = a - b = (policy_c - policy_r) - (ref_c - ref_r)
    avg_x = x / length_x                    (per-token average log-prob)

Formulas follow TRL's ``DPOTrainer`` / ``CPOTrainer`` / ``ORPOTrainer`` and the
papers cited in each docstring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses.config import LossConfig
from jaxalign.losses.inputs import STRENGTH_COLUMN, PreferenceInputs, batch_scalar, completion_lengths, example_column
from jaxalign.losses.registry import LossTerms, register_loss

Array = jax.Array

_ORPO_MAX_AVG_LOGP = -1e-6  # log(1 - p) diverges as p -> 1; keep p just below 1


def log_ratios(inputs: PreferenceInputs) -> tuple[Array, Array]:
    """``(a, b)``: chosen and rejected policy/reference log-ratios ``[N]``."""
    return (
        inputs.policy_chosen_logps - inputs.ref_chosen_logps,
        inputs.policy_rejected_logps - inputs.ref_rejected_logps,
    )


def preference_logits(inputs: PreferenceInputs) -> Array:
    """``(policy_c - policy_r) - (ref_c - ref_r)`` ``[N]``."""
    chosen, rejected = log_ratios(inputs)
    return chosen - rejected


def average_logps(inputs: PreferenceInputs) -> tuple[Array, Array]:
    """Per-token average policy log-probs ``(chosen, rejected)`` ``[N]``."""
    return (
        inputs.policy_chosen_logps / completion_lengths(inputs.chosen_lengths),
        inputs.policy_rejected_logps / completion_lengths(inputs.rejected_lengths),
    )


def smoothed_logistic(z: Array, label_smoothing: float) -> Array:
    """``-(1 - eps) log sigma(z) - eps log sigma(-z)``: logistic loss with flip rate eps."""
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)


def pair_label_smoothing(inputs, label_smoothing: float) -> Array | float:
    """Each pair's label smoothing: ``label_smoothing`` (eps) alone, or, with a
    ``preference_strength`` column p (P(chosen is better)), ``1 - p'`` where
    ``p' = p (1 - eps) + (1 - p) eps``: eps read as a further flip rate on top of
    the stated strength. p = 1 gives eps, eps = 0 gives ``1 - p``."""
    if STRENGTH_COLUMN not in inputs.batch:
        return label_smoothing
    strength = example_column(inputs, STRENGTH_COLUMN)
    return 1.0 - (strength * (1.0 - label_smoothing) + (1.0 - strength) * label_smoothing)


def chosen_nll(inputs: PreferenceInputs) -> Array:
    """Per-token NLL of the chosen completion, ``-policy_chosen / length_c`` ``[N]``."""
    return -inputs.policy_chosen_logps / completion_lengths(inputs.chosen_lengths)


@register_loss("sigmoid", uses_label_smoothing=True, soft_labels=True)
def sigmoid_loss(inputs: PreferenceInputs, cfg: LossConfig) -> Array:
    """DPO (Rafailov et al. 2023): ``-log sigma(beta * logits)``.

    With ``label_smoothing`` eps > 0, conservative DPO (cDPO, Mitchell 2023):
    ``-(1 - eps) log sigma(beta * logits) - eps log sigma(-beta * logits)``;
    per pair from a ``preference_strength`` column (``pair_label_smoothing``).
    """
    return smoothed_logistic(cfg.beta * preference_logits(inputs), pair_label_smoothing(inputs, cfg.label_smoothing))


@register_loss("robust", uses_label_smoothing=True)
def robust_loss(inputs: PreferenceInputs, cfg: LossConfig) -> Array:
    """rDPO (Chowdhury et al. 2024), unbiased under label-flip rate eps:

    ``((1 - eps) * -log sigma(z) + eps * log sigma(-z)) / (1 - 2 eps)``, ``z = beta * logits``.
    """
    eps = cfg.label_smoothing
    z = cfg.beta * preference_logits(inputs)
    return (-(1.0 - eps) * jax.nn.log_sigmoid(z) + eps * jax.nn.log_sigmoid(-z)) / (1.0 - 2.0 * eps)


@register_loss("ipo", soft_labels=True)
def ipo_loss(inputs: PreferenceInputs, cfg: LossConfig) -> Array:
    """IPO (Azar et al. 2023, eq. 17): ``(d - 1 / (2 beta))^2``.

    ``d = a / length_c - b / length_r``: log-ratios averaged per token, as TRL
    does (confirmed with the IPO authors), so beta does not scale with length.
    With a ``preference_strength`` column p the target is IPO's own for a
    preference probability, ``(p - 1/2) / beta`` (the paper's regression onto
    ``tau^-1 (p(y > y') - 1/2)``); p = 1 is the line above exactly.
    """
    chosen, rejected = log_ratios(inputs)
    d = chosen / completion_lengths(inputs.chosen_lengths) - rejected / completion_lengths(inputs.rejected_lengths)
    if STRENGTH_COLUMN not in inputs.batch:
        return (d - 1.0 / (2.0 * cfg.beta)) ** 2
    return (d - (example_column(inputs, STRENGTH_COLUMN) - 0.5) / cfg.beta) ** 2


@register_loss("hinge")
def hinge_loss(inputs: PreferenceInputs, cfg: LossConfig) -> Array:
    """SLiC hinge (Zhao et al. 2023; RSO, Liu et al. 2023): ``relu(1 - beta * logits)``."""
    return jax.nn.relu(1.0 - cfg.beta * preference_logits(inputs))


@register_loss("sppo_hard")
def sppo_hard_loss(inputs: PreferenceInputs, cfg: LossConfig) -> Array:
    """SPPO (Wu et al. 2024) with hard win probabilities (1 chosen, 0 rejected):

    ``(a - 1 / (2 beta))^2 + (b + 1 / (2 beta))^2``.
    """
    chosen, rejected = log_ratios(inputs)
    target = 0.5 / cfg.beta
    return (chosen - target) ** 2 + (rejected + target) ** 2


@register_loss("nca_pair")
def nca_pair_loss(inputs: PreferenceInputs, cfg: LossConfig) -> Array:
    """NCA (Chen et al. 2024), pairwise:

    ``-log sigma(beta a) - 0.5 log sigma(-beta a) - 0.5 log sigma(-beta b)``.
    """
    chosen, rejected = log_ratios(inputs)
    chosen_reward, rejected_reward = cfg.beta * chosen, cfg.beta * rejected
    return (
        -jax.nn.log_sigmoid(chosen_reward)
        - 0.5 * jax.nn.log_sigmoid(-chosen_reward)
        - 0.5 * jax.nn.log_sigmoid(-rejected_reward)
    )


@register_loss("bco_pair")
def bco_pair_loss(inputs: PreferenceInputs, cfg: LossConfig) -> LossTerms:
    """BCO (Jung et al. 2024), pairwise: ``-log sigma(beta a - delta) - log sigma(-(beta b - delta))``.

    delta is the mean implicit reward: ``batch["bco_delta"]`` (a scalar, e.g.
    a running mean the trainer keeps; TRL keeps one across steps) when given,
    otherwise estimated in this call as the masked mean of ``beta a`` and
    ``beta b``, without gradient. The in-call estimate makes micro-batches
    differ slightly from the full batch; pass ``bco_delta`` for exactness.
    """
    chosen, rejected = log_ratios(inputs)
    chosen_reward, rejected_reward = cfg.beta * chosen, cfg.beta * rejected
    delta = batch_scalar(inputs, "bco_delta")
    if delta is None:
        real = inputs.mask
        reward_sum = jnp.sum(jnp.where(real > 0, real * (chosen_reward + rejected_reward), 0.0))
        delta = reward_sum / jnp.maximum(2.0 * jnp.sum(real), 1e-6)  # 0 for an all-masked batch
    delta = jax.lax.stop_gradient(delta)
    per_example = -jax.nn.log_sigmoid(chosen_reward - delta) - jax.nn.log_sigmoid(-(rejected_reward - delta))
    return LossTerms(per_example, {"bco/delta": jnp.broadcast_to(delta, per_example.shape)})


@register_loss("apo_zero")
def apo_zero_loss(inputs: PreferenceInputs, cfg: LossConfig) -> Array:
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7), for chosen outputs better than the model's:

    ``(1 - sigma(beta a)) + sigma(beta b)``.
    """
    chosen, rejected = log_ratios(inputs)
    return (1.0 - jax.nn.sigmoid(cfg.beta * chosen)) + jax.nn.sigmoid(cfg.beta * rejected)


@register_loss("apo_down")
def apo_down_loss(inputs: PreferenceInputs, cfg: LossConfig) -> Array:
    """APO-down (D'Oosterlinck et al. 2024, eq. 8), for chosen outputs worse than the model's:

    ``sigma(beta a) + (1 - sigma(beta (a - b)))``.
    """
    chosen, rejected = log_ratios(inputs)
    return jax.nn.sigmoid(cfg.beta * chosen) + (1.0 - jax.nn.sigmoid(cfg.beta * (chosen - rejected)))


@register_loss("sigmoid_norm")
def sigmoid_norm_loss(inputs: PreferenceInputs, cfg: LossConfig) -> Array:
    """Length-normalised DPO (Tulu 3, Lambert et al. 2024; TRL's ``sigmoid_norm``):

    ``-log sigma(beta * (a / length_c - b / length_r))``.
    """
    chosen, rejected = log_ratios(inputs)
    d = chosen / completion_lengths(inputs.chosen_lengths) - rejected / completion_lengths(inputs.rejected_lengths)
    return -jax.nn.log_sigmoid(cfg.beta * d)


@register_loss("simpo", needs_reference=False, uses_label_smoothing=True, soft_labels=True)
def simpo_loss(inputs: PreferenceInputs, cfg: LossConfig) -> LossTerms:
    """SimPO (Meng et al. 2024), reference-free: ``-log sigma(beta (avg_c - avg_r) - gamma)``.

    gamma is ``simpo_gamma``; ``label_smoothing`` smooths it as TRL's CPOTrainer
    does. Rewards are ``beta * avg``.
    """
    chosen, rejected = average_logps(inputs)
    z = cfg.beta * (chosen - rejected) - cfg.simpo_gamma
    return LossTerms(
        smoothed_logistic(z, pair_label_smoothing(inputs, cfg.label_smoothing)),
        chosen_rewards=cfg.beta * chosen,
        rejected_rewards=cfg.beta * rejected,
        chosen_logps=chosen,  # TRL's CPOTrainer logs SimPO's per-token averages as logps/*
        rejected_logps=rejected,
    )


@register_loss("cpo", needs_reference=False, uses_label_smoothing=True, soft_labels=True)
def cpo_loss(inputs: PreferenceInputs, cfg: LossConfig) -> LossTerms:
    """CPO (Xu et al. 2024): ``-log sigma(beta (policy_c - policy_r)) + cpo_alpha * nll_c``.

    ``nll_c`` is the chosen completion's per-token NLL. Rewards are
    ``beta * policy`` summed log-probs, as in TRL's CPOTrainer.
    """
    preference = smoothed_logistic(
        cfg.beta * (inputs.policy_chosen_logps - inputs.policy_rejected_logps),
        pair_label_smoothing(inputs, cfg.label_smoothing),
    )
    nll = chosen_nll(inputs)
    return LossTerms(
        preference + cfg.cpo_alpha * nll,
        {"nll_loss": nll},
        chosen_rewards=cfg.beta * inputs.policy_chosen_logps,
        rejected_rewards=cfg.beta * inputs.policy_rejected_logps,
    )


def log1mexp(x: Array) -> Array:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near 0 and far below it."""
    return jnp.where(x > -jnp.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


@register_loss("orpo", needs_reference=False)
def orpo_loss(inputs: PreferenceInputs, cfg: LossConfig) -> LossTerms:
    """ORPO (Hong et al. 2024): ``nll_c - beta * log sigma(log_odds)`` (beta is lambda).

    ``log_odds = (avg_c - avg_r) - (log(1 - e^avg_c) - log(1 - e^avg_r))`` on
    per-token average log-probs; ``nll_c = -avg_c``. Metrics as TRL's:
    ``log_odds_ratio`` (mean ``log sigma(log_odds)``), ``log_odds_chosen``,
    ``nll_loss``; rewards are ``beta * avg``.
    """
    average_chosen, average_rejected = average_logps(inputs)
    chosen = jnp.minimum(average_chosen, _ORPO_MAX_AVG_LOGP)
    rejected = jnp.minimum(average_rejected, _ORPO_MAX_AVG_LOGP)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    log_odds_ratio = jax.nn.log_sigmoid(log_odds)
    nll = -chosen
    return LossTerms(
        nll - cfg.beta * log_odds_ratio,
        {"log_odds_ratio": log_odds_ratio, "log_odds_chosen": log_odds, "nll_loss": nll},
        chosen_rewards=cfg.beta * chosen,
        rejected_rewards=cfg.beta * rejected,
        chosen_logps=average_chosen,  # per-token averages, as TRL's ORPOTrainer logs them
        rejected_logps=average_rejected,
    )


@register_loss("sft", needs_reference=False)
def sft_loss(inputs: PreferenceInputs, cfg: LossConfig) -> Array:
    """NLL of the chosen completion per token, ``-policy_chosen / length_c``.

    Added to a preference loss it gives RPO (Pang et al. 2024):
    ``name: [sigmoid, sft]`` or ``rpo_alpha``.
    """
    return chosen_nll(inputs)
