"""A frozen Hugging Face reward model as a reward source (kind ``model``).

The folder is a ``*ForSequenceClassification`` checkpoint (``num_labels`` 1),
e.g. an ``algo: rm`` run's ``export/``; its score is the one at the reply's
last token. Tokens:

- the folder's tokenizer has the policy's vocabulary (or the folder has no
  tokenizer and the model's vocabulary covers the policy's): the rollout's own
  ``[prompt | completion]`` ids are scored as they are, no text round trip;
- otherwise the prompt and completion texts are re-tokenized with the reward
  model's tokenizer (its own special tokens; over-long texts keep their end).
  At setup the prompts' sample texts are encoded with it, and a tokenizer that
  turns more than ``MAX_UNKNOWN_SHARE`` of their tokens into its unknown token
  (it cannot represent the policy's text) is an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.models import layout_from_attention_mask, load_pretrained
from jaxalign.rl.record import host_array
from jaxalign.rl.sources import RewardSpec, ScoringInputs, SourceContext, register_reward_source
from jaxalign.rl.teacher_forcing import last_token_scores, sequences
from jaxalign.sharding import batch_sharding

MAX_UNKNOWN_SHARE = 0.05
LENGTH_MULTIPLE = 64  # re-tokenized rows are padded to a multiple of this, so few shapes compile
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


class RewardModelError(ValueError):
    """A reward-model folder that cannot score this policy's replies."""


def _folder_tokenizer(path: str) -> Any | None:
    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        return None
    from jaxalign.data.tokenize import load_tokenizer

    return load_tokenizer(path)


def same_vocabulary(a: Any, b: Any) -> bool:
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


def check_encodes(tokenizer: Any, texts: list[str], where: str) -> None:
    """Raises ``RewardModelError`` when ``tokenizer`` maps too many tokens of ``texts`` to its unknown token."""
    unknown = tokenizer.unk_token_id
    if unknown is None or not texts:
        return
    ids = [i for text in texts for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    share = sum(i == unknown for i in ids) / max(len(ids), 1)
    if share > MAX_UNKNOWN_SHARE:
        raise RewardModelError(
            f"{where}: the reward model's tokenizer cannot encode the policy's text: {share:.0%} of the tokens of "
            f"{len(texts)} sample prompts are its unknown token {tokenizer.unk_token!r} (limit "
            f"{MAX_UNKNOWN_SHARE:.0%}); use a reward model trained with a tokenizer that covers this data")


class ModelSource:
    """Scores with a frozen ``ScoreModel``; ``params`` are the frozen parameters (never trained)."""

    def __init__(self, path: str, name: str, context: SourceContext):
        self.path, self.name = path, name
        self.mesh = context.mesh
        model = load_pretrained(path, mesh=context.mesh, rules=context.rules, head="score", dtype=context.dtype,
                                param_dtype=context.frozen_dtype)
        self.graphdef, state = nnx.split(model)
        self.params = nnx.to_pure_dict(state)
        self.max_length = model.config.max_position_embeddings
        where = f"reward model {path}"
        tokenizer = _folder_tokenizer(path)
        if tokenizer is None or same_vocabulary(tokenizer, context.tokenizer):
            if model.config.vocab_size < len(context.tokenizer):
                raise RewardModelError(
                    f"{where} has a vocabulary of {model.config.vocab_size} tokens, fewer than the policy's tokenizer "
                    f"({len(context.tokenizer)}), and no tokenizer of its own: save its tokenizer in the folder")
            self.tokenizer, self.shares_tokens = context.tokenizer, True
        else:
            check_encodes(tokenizer, list(context.sample_texts()), where)
            self.tokenizer, self.shares_tokens = tokenizer, False
        self._score_rows = jax.jit(self._score_rows_fn)
        self._score_batch = jax.jit(self._score_batch_fn)

    def _score_batch_fn(self, params: Any, prompt_ids, prompt_mask, completion_ids, completion_mask) -> jax.Array:
        model = nnx.merge(self.graphdef, params)
        per_position = model.scores(*sequences(prompt_ids, prompt_mask, completion_ids, completion_mask))
        return last_token_scores(per_position, prompt_ids.shape[1], completion_mask)

    def _score_rows_fn(self, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """Right-padded rows ``[R, L]``: the score at each row's last token."""
        model = nnx.merge(self.graphdef, params)
        positions, segment_ids = layout_from_attention_mask(mask)
        per_position = model.scores(ids, positions, segment_ids)
        last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
        return jnp.take_along_axis(per_position, last[:, None], axis=1)[:, 0]

    def score(self, inputs: ScoringInputs) -> tuple[np.ndarray, np.ndarray]:
        batch = inputs.batch
        if self.shares_tokens:
            scores = self._score_batch(self.params, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                       batch.completion_mask)
        else:
            ids, mask = self._retokenize(inputs, batch.num_rows)
            scores = self._score_rows(self.params, ids, mask)
        values = host_array(scores)[inputs.rows].astype(np.float32)
        return values, np.ones(len(values), bool)

    def _retokenize(self, inputs: ScoringInputs, num_rows: int) -> tuple[jax.Array, jax.Array]:
        """Prompt + completion texts in the reward model's tokens, right-padded ``[R, L]`` on the rows'
        sharding (padding rows empty)."""
        encoded = [self.tokenizer(prompt + completion)["input_ids"][-self.max_length:]
                   for prompt, completion in zip(inputs.prompts, inputs.completions)]
        width = -(-max((len(ids) for ids in encoded), default=1) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE
        width = min(max(width, 1), max(self.max_length, 1))
        ids, mask = np.zeros((num_rows, width), np.int32), np.zeros((num_rows, width), np.int32)
        pad = self.tokenizer.pad_token_id or 0
        ids[:] = pad
        for row, tokens in zip(inputs.rows, encoded):
            ids[row, :len(tokens)], mask[row, :len(tokens)] = tokens, 1
        if self.mesh is None:
            return jnp.asarray(ids), jnp.asarray(mask)
        sharding = batch_sharding(self.mesh)
        return tuple(jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]) for a in (ids, mask))


@register_reward_source("model")
def _model_source(spec: RewardSpec, context: SourceContext) -> ModelSource:
    if spec.options:
        raise ValueError(f"reward source '{spec.target}': a reward model takes no options, got {sorted(spec.options)}")
    if not Path(spec.target).is_dir():
        raise RewardModelError(f"reward model {spec.target}: no such folder")
    name = spec.name or os.path.basename(os.path.normpath(spec.target)) or "reward_model"
    if name == "export":  # an algo: rm run's export/ -> the run's name
        name = os.path.basename(os.path.dirname(os.path.normpath(spec.target))) or name
    return ModelSource(spec.target, name, context)
