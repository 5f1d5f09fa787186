"""What an evaluation measures: ``EvalSpec``, the ``eval:`` section of a run config and the
second argument of ``jaxalign.eval.evaluate``. Imports nothing heavy (config.py uses it)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

KINDS = ("auto", "reward_model", "policy", "implicit_reward")
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class EvalError(ValueError):
    """Bad evaluation input; the message is one line naming the thing and how to fix it."""


@dataclasses.dataclass
class EvalSpec:
    """One evaluation. Fields apply to the kinds named in their comment; see docs/evaluation.md.

    During training (a run config's ``eval:`` section) ``every_steps`` > 0 runs it every that many
    optimizer steps on the policy being trained, and at the end."""

    name: str = "eval"  # the result file RUN_DIR/eval/NAME.json and the metrics prefix eval/NAME
    kind: str = "auto"  # auto | reward_model | policy | implicit_reward
    # reward_model, implicit_reward: held-out preference pairs
    pairs: str | None = None  # data spec (file, builtin:NAME#split); default: the run's eval split
    category_column: str = "category"
    bins: int = 10  # reliability table bins
    beta: float | None = None  # implicit_reward: default the run's dpo loss beta, else 0.1
    # policy
    prompts: str | None = None  # data spec with a prompt column; default: the run's eval split
    num_generations: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 8  # prompts per sampling batch (replies: batch_size x num_generations)
    generation_slots: int = 0  # replies sampled at once (continuous batching); 0 = the whole batch at once
    max_prompts: int | None = None  # the first N prompts; None = all
    max_prompt_length: int = 512
    rewards: list[Any] | None = None  # reward sources as in ppo.rewards (role: gold allowed)
    reference: str | None = None  # policy folder: KL and win rate; default the run's start model; "none" = skip
    judge: str | None = None  # reward-model folder judging win rate; default the first model reward source
    checkers: list[str] = dataclasses.field(default_factory=list)  # registered task checkers, e.g. [alignment]
    seed: int = 0
    output_dir: str | None = None  # where eval/NAME.json goes when the target is in no run dir
    step: int | None = None  # the step recorded; default the run's last step
    every_steps: int = 0  # during training: every N optimizer steps (0 = only when called)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not NAME.match(self.name):
            problems.append(f"name {self.name!r} must be letters, digits, '_', '-' or '.'")
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} must be one of {', '.join(KINDS)}")
        for field in ("num_generations", "max_new_tokens", "batch_size", "bins", "max_prompt_length"):
            if getattr(self, field) < 1:
                problems.append(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.generation_slots < 0:
            problems.append(f"generation_slots must be >= 1 (replies sampled at once), or 0 for the whole batch, "
                            f"got {self.generation_slots}")
        if self.max_prompts is not None and self.max_prompts < 1:
            problems.append(f"max_prompts must be >= 1 or null, got {self.max_prompts}")
        if self.temperature < 0 or self.every_steps < 0:
            problems.append("temperature and every_steps must be >= 0")
        if isinstance(self.checkers, str):
            self.checkers = [self.checkers]
        if problems:
            raise EvalError("eval: " + "; ".join(problems))

    @classmethod
    def of(cls, spec: "EvalSpec | Mapping[str, Any] | None", **overrides: Any) -> "EvalSpec":
        """An ``EvalSpec`` from itself, a mapping of its fields (unknown keys are an error) or None."""
        if spec is None:
            spec = {}
        if isinstance(spec, EvalSpec):
            return dataclasses.replace(spec, **overrides) if overrides else spec
        if not isinstance(spec, Mapping):
            raise EvalError(f"eval: the spec is a mapping of EvalSpec fields, got {type(spec).__name__}")
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - fields)
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], fields, n=1)
            raise EvalError(f"eval: unknown key {unknown[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                            + f"; keys: {', '.join(sorted(fields))}")
        return cls(**{**spec, **overrides})


DATA_FIELDS = ("pairs", "prompts")  # the fields that name a data set


MODEL_FIELDS = ("reference", "judge", "rewards")  # the fields that may name model folders


def input_digests(spec: Mapping[str, Any], target: str | None = None) -> dict[str, str]:
    """What a result was measured on, so a rerun can tell inputs changed under the same names apart:
    ``{field: sha256}`` of each data set ``spec`` names that is a local file (``builtin:`` and hub
    sets have none: the installed version or their revision fixes them), and a fingerprint of
    each local model folder it names (``reference``, ``judge``, model paths in ``rewards``, keyed
    ``model:PATH``) and of the evaluated ``target`` folder (``hub.model_folder_digest``), so a
    model retrained in place is measured again."""
    import hashlib
    from pathlib import Path

    from jaxalign.hub import model_folder_digest

    digests = {}
    for field in DATA_FIELDS:
        value = spec.get(field)
        if isinstance(value, str) and Path(value).expanduser().is_file():
            digests[field] = hashlib.sha256(Path(value).expanduser().read_bytes()).hexdigest()
    for path in sorted(set(_local_folders([spec.get(field) for field in MODEL_FIELDS]))):
        digests[f"model:{path}"] = model_folder_digest(path)
    if target is not None:
        digests["target"] = model_folder_digest(target)
    return digests


def _local_folders(value: Any):
    """Every string in ``value`` (nested lists and mappings) that names an existing folder."""
    from pathlib import Path

    if isinstance(value, str):
        if Path(value).expanduser().is_dir():
            yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _local_folders(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _local_folders(item)
