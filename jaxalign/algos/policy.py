"""The policy an RL algorithm trains and its reference, through the trainable-subset seam.

An algorithm with a policy and a reference (the DPO family, PPO, GRPO, ...) builds its policy with
``build_policy`` and never looks at ``lora:``, ``model.trainable`` or
``model.freeze`` itself:

* ``Policy.params`` is the trained part (the whole policy, or its LoRA adapters,
  or what ``model.trainable`` selects): put it in the train state.
* ``Policy.frozen`` holds the entries for ``AlgoRun.frozen``: the frozen part
  (never donated or checkpointed) and the reference's own arrays.
* ``full(trained, frozen)`` is the whole policy for the sampler and the
  teacher-forced pass; ``model(trained, frozen, dropout_key)`` the merged module
  inside a step.
* ``reference(frozen)`` is the reference's parameters for
  ``RolloutEngine(..., reference_graphdef=policy.reference_graphdef)``: a
  ``ref_model`` folder, or the starting policy. With LoRA the starting policy
  is the base with adapters off, which is the frozen part itself: no copy. Without
  LoRA the trained part's starting values are copied (in ``frozen_dtype``) because
  the train state's buffers are donated every step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxalign.algos import common
from jaxalign.config import ModelSpec, TrainConfig
from jaxalign.models.lora import LoraConfig
from jaxalign.train_state import TrainState

REF_PARAMS = "ref_params"  # AlgoRun.frozen: a ref_model's parameters


@dataclasses.dataclass
class Policy:
    """A trained model split through the seam (see the module docstring)."""

    graphdef: nnx.GraphDef
    params: dict  # the trained part
    frozen: dict  # entries for AlgoRun.frozen
    reference_graphdef: nnx.GraphDef | None  # None: built without a reference
    hidden_size: int
    export: Callable[[TrainState, str], list[str] | None]  # export(state with params = the trained part, path)

    def full(self, trained: dict, frozen: dict) -> dict:
        """The whole policy's parameters from the trained part and the step's ``frozen`` input."""
        return common.with_frozen(trained, frozen)

    def model(self, trained: dict, frozen: dict, dropout_key: jax.Array | None = None) -> nnx.Module:
        """The policy module inside a step (LoRA dropout with a key)."""
        return common.merge_model(self.graphdef, self.full(trained, frozen), dropout_key)

    def reference(self, frozen: dict) -> dict | None:
        """The reference's parameters (None without a reference)."""
        if self.reference_graphdef is None:
            return None
        return frozen[REF_PARAMS] if REF_PARAMS in frozen else common.reference_params(frozen)

    def without_reference(self, frozen: dict) -> dict:
        """``frozen`` less the reference's own arrays (what the policy itself needs)."""
        return {name: value for name, value in frozen.items() if name not in (REF_PARAMS, common.REF_TRAINED)}


def build_trained(spec: ModelSpec, cfg: TrainConfig, mesh: Mesh, head: str, tokenizer: Any,
                  lora: LoraConfig | None) -> tuple[nnx.Module, nnx.GraphDef, dict, dict]:
    """``(model, graphdef, trained part, frozen entries)`` of a model trained through the seam."""
    model = common.build_model(spec, cfg, mesh, head=head, tokenizer=tokenizer, lora=lora)
    graphdef, params = common.split_params(model)
    trained, frozen = common.trainable_split(spec, params, lora)
    return model, graphdef, trained, frozen


def build_policy(cfg: TrainConfig, mesh: Mesh, tokenizer: Any, reference: bool = True,
                 frozen_dtype: str | None = None, copy_reference: bool = True) -> Policy:
    """The policy ``cfg.model`` (with ``cfg.lora``'s adapters), and with ``reference`` its
    reference: ``cfg.ref_model`` loaded in ``frozen_dtype``, else the starting policy (copies
    of trained base parameters in ``frozen_dtype``; the frozen part shared).
    ``copy_reference=False`` shares the trained base parameters instead of copying them: for a
    reference used only before the first step (DPO's precomputed log-probs), after which
    ``without_reference`` drops it."""
    model, graphdef, trained, frozen = build_trained(cfg.model, cfg, mesh, "causal_lm", tokenizer, cfg.lora)
    entries, ref_graphdef = dict(frozen), None
    if reference and cfg.ref_model is not None:
        spec = cfg.ref_model if frozen_dtype is None else dataclasses.replace(cfg.ref_model, param_dtype=frozen_dtype)
        ref_graphdef, entries[REF_PARAMS] = common.split_params(
            common.build_model(spec, cfg, mesh, head="causal_lm", tokenizer=tokenizer))
    elif reference:
        ref_graphdef, reference_entries = common.starting_reference(model, graphdef, trained, copy=copy_reference,
                                                                    dtype=frozen_dtype)
        entries.update(reference_entries)
    export = common.export_with(graphdef, frozen, cfg.lora, common.base_name(cfg.model))
    return Policy(graphdef, trained, entries, ref_graphdef, model.config.hidden_size, export)
