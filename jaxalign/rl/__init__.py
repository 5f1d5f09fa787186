"""The rollout layer: prompts -> n sampled replies each (one prefill per prompt) -> weighted
reward sources -> one teacher-forced pass (policy / reference log-probs, values, entropies).

PPO uses it today; GRPO, ``jaxalign eval`` and Constitutional AI are meant to (see docs/rl.md).
"""

from jaxalign.rl.prompts import prompt_batch
from jaxalign.rl.record import Rollout, RolloutBatch, concatenate
from jaxalign.rl.rollout import RolloutEngine, ValueFn, scoring_inputs
from jaxalign.rl.shaping import RewardShaping
from jaxalign.rl.sources import (
    ROLES,
    FunctionSource,
    RewardSet,
    RewardSource,
    RewardSpec,
    ScoringInputs,
    SourceContext,
    parse_reward_spec,
    parse_reward_specs,
    register_reward_source,
    reward_source_kinds,
)
from jaxalign.rl.teacher_forcing import completion_logps, last_token_scores, policy_pass, sequences
from jaxalign.rl.verifiers import make_verifier, register_verifier, verifier_names

__all__ = [
    "ROLES",
    "RewardShaping",
    "scoring_inputs",
    "FunctionSource",
    "RewardSet",
    "RewardSource",
    "RewardSpec",
    "Rollout",
    "RolloutBatch",
    "RolloutEngine",
    "ScoringInputs",
    "SourceContext",
    "ValueFn",
    "completion_logps",
    "concatenate",
    "last_token_scores",
    "make_verifier",
    "parse_reward_spec",
    "parse_reward_specs",
    "policy_pass",
    "prompt_batch",
    "register_reward_source",
    "register_verifier",
    "reward_source_kinds",
    "sequences",
    "verifier_names",
]
