"""Models an evaluation loads: a folder's model as its ``nnx.split`` pair and its tokenizer, and
the jitted pieces every evaluator shares (reply log-probs, a reward model's last-token score)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxalign.eval.spec import EvalError
from jaxalign.eval.target import POLICY, REWARD_MODEL, folder_kind
from jaxalign.rl.teacher_forcing import last_token_scores, policy_pass, sequences

HEADS = {POLICY: "causal_lm", REWARD_MODEL: "score"}


@dataclasses.dataclass
class Loaded:
    """A model as (graph definition, parameters), its tokenizer, its config and where it came from."""

    graphdef: nnx.GraphDef
    params: Any
    tokenizer: Any
    config: Any
    where: str


def load(folder: str | Path, kind: str, what: str, tokenizer: Any = None, dtype: str = "float32") -> Loaded:
    """The ``kind`` (policy or reward_model) model in ``folder``; ``what`` names it in errors
    ("the evaluated policy", "eval.reference", ...). A folder of the other kind is an error."""
    from jaxalign.data.tokenize import load_tokenizer
    from jaxalign.models import load_pretrained

    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"eval: {what} {folder}: no such folder")
    found = folder_kind(folder)
    if found != kind:
        expected = "a policy (*ForCausalLM)" if kind == POLICY else "a reward model (*ForSequenceClassification)"
        got = "a reward model" if found == REWARD_MODEL else "a policy"
        raise EvalError(f"eval: {what} {folder} is {got}, but {expected} is expected here")
    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(str(folder))
        except (OSError, ValueError) as err:
            raise EvalError(f"eval: {what} {folder} has no readable tokenizer ({type(err).__name__}); save the "
                            f"tokenizer into the folder") from None
    model = load_pretrained(folder, head=HEADS[kind], dtype=dtype, param_dtype=dtype)
    graphdef, state = nnx.split(model)
    return Loaded(graphdef, nnx.to_pure_dict(state), tokenizer, model.config, str(folder))


@functools.lru_cache(maxsize=None)
def reply_logps_fn(graphdef: nnx.GraphDef):
    """Jitted ``(params, prompt_ids, prompt_mask, completion_ids, completion_mask) -> [R]``: each
    reply's summed log-prob at temperature 1 (no ``[R, N, V]`` logits are held)."""

    @jax.jit
    def reply_logps(params, prompt_ids, prompt_mask, completion_ids, completion_mask):
        model = nnx.merge(graphdef, params)
        logps = policy_pass(model, prompt_ids, prompt_mask, completion_ids, completion_mask, 1.0)[0]
        return jnp.sum(logps * completion_mask, axis=1)

    return reply_logps


@functools.lru_cache(maxsize=None)
def reply_scores_fn(graphdef: nnx.GraphDef):
    """Jitted ``(params, prompt_ids, prompt_mask, completion_ids, completion_mask) -> [R]``: a reward
    model's score at each reply's last token."""

    @jax.jit
    def reply_scores(params, prompt_ids, prompt_mask, completion_ids, completion_mask):
        model = nnx.merge(graphdef, params)
        per_position = model.scores(*sequences(prompt_ids, prompt_mask, completion_ids, completion_mask))
        return last_token_scores(per_position, prompt_ids.shape[1], completion_mask)

    return reply_scores
