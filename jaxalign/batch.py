"""The packed batch layout every algorithm consumes, and the reductions over it.

One layout serves reward models, SFT, the DPO family and KTO. Examples are
packed several to a row with segment ids, so no compute goes to padding, and a
preference pair stores its prompt once::

    row:      [ prompt_1 | chosen_1 | rejected_1 | prompt_2 | chosen_2 | rejected_2 | pad ]
    segment:      1          1          1            2          2          2          0
    branch:       0          1          2            0          1          2          0

A token attends to an earlier token of its own segment when that token is in
the shared prompt (branch 0) or in its own branch; so rejected tokens see the
prompt but never the chosen reply. Positions restart per example, and the
rejected reply's positions continue from the prompt's end, exactly as if it
had been a separate sequence.

Only completion tokens need a vocabulary projection, so the batch lists them
explicitly as *targets*: ``target_index`` is the position whose output predicts
``target_ids`` (for the first token of the rejected reply that is the last
prompt token, not the token just before it in the row). Targets are flat per
*row group*: the R rows form G groups of R / G consecutive rows (G = the
data-parallel shards of the batch, so a group never spans devices), and a
group's targets fill one list of C slots, so the projection runs on the
completion tokens plus one group's rounding, not on every row's longest list.

Arrays (R rows, L tokens a row, G row groups, C target slots a group, K example slots a row):

=================  ===========  =====================================================
name               shape        meaning
=================  ===========  =====================================================
input_ids          [R, L] i32   token ids; 0 in padding
positions          [R, L] i32   position of the token within its own sequence
segment_ids        [R, L] i32   example slot 1..K within the row; 0 = padding
branch_ids         [R, L] i32   0 = shared prompt, 1 = chosen (or the only
                                completion), 2 = rejected
target_index       [G, C] i32   row position whose output predicts the target
target_ids         [G, C] i32   the target token
target_segment     [G, C] i32   example slot 1..K of the target; 0 = unused slot
target_branch      [G, C] i32   1 = chosen / only completion, 2 = rejected
target_row         [G, C] i32   the target's row within its group (0..R/G - 1)
end_index          [R, K, 2]    row position of the last token of chosen (0) and
                   i32          rejected (1); where reward models read scores
example_mask       [R, K] f32   1.0 where the slot holds an example
=================  ===========  =====================================================

Optional per-example columns, all ``[R, K]`` float32 unless noted: ``margin``
(reward-model margin), ``label`` (KTO: 1 desirable, 0 undesirable; pointwise
reward models: 1 acceptable), ``weight`` (the loss is the weighted mean),
``preference_strength`` (P(chosen is better), soft labels), ``rating`` and
``rating_level`` (pointwise reward models; ``jaxalign.data.columns``),
``ref_logps`` ``[R, K, 2]`` (precomputed reference log-prob sums).

Rankings (listwise reward models) use branches 1..M for a ranking's replies,
best first, each attending to the prompt and itself; their ``end_index`` is
``[R, K, M]`` and ``reply_mask`` ``[R, K, M]`` float32 marks the replies
present. Nothing else changes: the mask below already lets each branch see
only the prompt and itself.

``example_id`` ``[R, K]`` int32 is each example's index in its split (0 in
empty slots); precomputed reference log-probs are looked up by it.

``tile_pairs`` ``[R, P, 2]`` int32 (optional) lists, per row, the (query
tile, key tile) pairs of ``ATTENTION_TILE`` tokens that hold any visible
score of the mask above (-1 in unused slots); with it the models compute
attention on those tiles only (``jaxalign/models/tiled_attention.py``).

SFT uses branch 1 only; its ``end_index[..., 1]`` equals ``end_index[..., 0]``.
Unpaired KTO rows put the example's own completion in branch 1 and the next
example's completion in branch 2: the mismatched pair from which KTO
estimates its KL baseline.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NUM_BRANCHES = 2  # chosen, rejected
# Tokens per attention tile. 64 measured fastest on CPU for HH-RLHF rows of
# 1,024 (32: more pairs and smaller matmuls; 128: more masked work per tile).
ATTENTION_TILE = 64

REQUIRED_KEYS = (
    "input_ids",
    "positions",
    "segment_ids",
    "branch_ids",
    "target_index",
    "target_ids",
    "target_segment",
    "target_branch",
    "target_row",
    "end_index",
    "example_mask",
)


def attention_mask(segment_ids: jax.Array, branch_ids: jax.Array) -> jax.Array:
    """Boolean ``[R, L, L]`` mask (query, key) for the packed layout above.

    Padding queries attend to themselves only, so no softmax row is empty.
    """
    length = segment_ids.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    key_branch = branch_ids[:, None, :]
    visible_branch = (key_branch == 0) | (key_branch == branch_ids[:, :, None])
    real = (segment_ids != 0)[:, :, None]
    mask = causal[None] & same_segment & visible_branch & real
    return mask | jnp.eye(length, dtype=bool)[None]


def gather_positions(values: jax.Array, index: jax.Array) -> jax.Array:
    """Picks ``values[r, index[r, ...]]``.

    values: ``[R, L, ...]``; index: ``[R, *idx]`` -> ``[R, *idx, ...]``.
    """
    flat_index = index.reshape(index.shape[0], -1)
    picked = jax.vmap(lambda row, idx: row[idx])(values, flat_index)
    return picked.reshape(index.shape + values.shape[2:])


def gather_targets(values: jax.Array, batch: dict) -> jax.Array:
    """Picks each target's predicting position: ``values[group rows, target_row, target_index]``.

    values: ``[R, L, ...]`` -> ``[G, C, ...]``. A group's rows are contiguous, so
    ``[R, L]`` -> ``[G, R/G * L]`` is a local reshape on every device.
    """
    groups, rows, length = batch["target_index"].shape[0], values.shape[0], values.shape[1]
    flat = values.reshape(groups, rows // groups * length, *values.shape[2:])
    return gather_positions(flat, batch["target_row"] * length + batch["target_index"])


def per_example_sums(values: jax.Array, batch: dict) -> jax.Array:
    """Sums per-target values ``[G, C]`` into ``[R, K, 2]`` (row, example slot, branch).

    Unused slots (``target_segment`` 0) are dropped.
    """
    segment, branch, row = batch["target_segment"], batch["target_branch"], batch["target_row"]
    rows, slots = batch["example_mask"].shape
    groups = segment.shape[0]
    dump = rows // groups * slots * NUM_BRANCHES
    bucket = (row * slots + segment - 1) * NUM_BRANCHES + (branch - 1)
    bucket = jnp.where(segment > 0, bucket, dump)
    summed = jax.vmap(lambda v, b: jax.ops.segment_sum(v, b, num_segments=dump + 1))(values, bucket)
    return summed[:, :dump].reshape(rows, slots, NUM_BRANCHES)


def target_counts(batch: dict) -> jax.Array:
    """Number of completion tokens per example and branch, ``[R, K, 2]`` float32."""
    return per_example_sums((batch["target_segment"] > 0).astype(jnp.float32), batch)
