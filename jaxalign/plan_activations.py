"""Activation memory of one train or inference step, per device: the arithmetic of ``jaxalign plan``.

Pure functions of a model's per-device activation widths (``ActivationDims``) and a
batch's worst-case shape (``plan.Workload``); ``plan.PlanContext`` turns them into
the estimate's terms. Byte counts follow what the model code keeps (``jaxalign.models``):
a change to what a layer saves for its backward belongs here too.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from jaxalign.models.logps import DEFAULT_CHUNK_SIZE, chunk_tokens

if TYPE_CHECKING:
    from jaxalign.plan import Workload


@dataclasses.dataclass(frozen=True)
class ActivationDims:
    """Per-device activation widths (elements per token) and bytes."""

    hidden: int
    q: int  # heads x head_dim on this device
    kv: int
    mlp: int
    heads: int
    vocab: int
    compute_bytes: int
    gated: bool
    qk_norm: bool


def layer_residuals(d: ActivationDims, w: Workload) -> int:
    """Bytes one layer keeps for its backward without remat: the block input, both
    norm outputs, the post-attention residual, q/k/v (after RoPE), the attention
    output, the MLP's gate/up/product (gpt2: up and activation), q/k norms (Qwen3),
    and the softmax output ``[heads, L, L]`` in float32 (plus its cast to the
    compute dtype when that is narrower)."""
    per_token = 4 * d.hidden + 2 * d.q + 2 * d.kv + (3 if d.gated else 2) * d.mlp
    if d.qk_norm:
        per_token += d.q + d.kv
    probs_bytes = 4 + (d.compute_bytes if d.compute_bytes < 4 else 0)
    return w.tokens * per_token * d.compute_bytes + w.rows * d.heads * w.length**2 * probs_bytes


def saved_per_layer(d: ActivationDims, w: Workload, remat: str) -> int:
    """What each layer holds from its forward until its backward, by remat policy.

    none: all of ``layer_residuals``. full: the block input only. dots: the block
    input plus the outputs of the weight matmuls (q, k, v, o_proj, gate, up);
    attention is recomputed because its einsums have batch dimensions.
    """
    if remat == "none":
        return layer_residuals(d, w)
    if remat == "full":
        return w.tokens * d.hidden * d.compute_bytes
    per_token = 2 * d.hidden + d.q + 2 * d.kv + (2 if d.gated else 1) * d.mlp
    return w.tokens * per_token * d.compute_bytes


def backward_working_set(d: ActivationDims, w: Workload, remat: str) -> int:
    """The one layer being differentiated: the gradients of the softmax input and
    output ``[heads, L, L]`` float32 and of the residual stream (float32); with
    remat, that layer's recomputed residuals on top."""
    grads = 2 * w.rows * d.heads * w.length**2 * 4 + 2 * w.tokens * d.hidden * 4
    return grads + (layer_residuals(d, w) if remat != "none" else 0)


def head_working_set(d: ActivationDims, w: Workload, head: str) -> int:
    """Outside the layers: embeddings and final hidden states, the ``[L, L]`` mask,
    RoPE tables, and for a causal LM the gathered target states plus one chunk of
    float32 logits and its gradient (``jaxalign.models.logps``)."""
    total = 2 * w.tokens * d.hidden * d.compute_bytes + w.rows * w.length**2 + 2 * w.tokens * (d.q // max(d.heads, 1)) * 4
    if head == "causal_lm":
        chunk = chunk_tokens(w.rows, w.targets, DEFAULT_CHUNK_SIZE)  # target tokens over all rows
        total += w.rows * w.targets * d.hidden * d.compute_bytes + 2 * chunk * d.vocab * 4
    return total


def forward_working_set(d: ActivationDims, w: Workload) -> int:
    """An inference-only forward (no backward, nothing saved): the layer being computed
    (its input and residual, the MLP's wide activations, q/k/v) and its softmax
    input and output ``[heads, L, L]`` in float32."""
    per_token = 2 * d.hidden + d.q + 2 * d.kv + 2 * d.mlp
    return w.tokens * per_token * d.compute_bytes + 2 * w.rows * d.heads * w.length**2 * 4
