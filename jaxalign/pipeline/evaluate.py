"""The pipeline's evaluations: each entry of a pipeline's ``eval.runs`` is an ``EvalSpec``
(the fields of ``jaxalign eval``, see docs/evaluation.md) and runs through
``jaxalign.eval.evaluate`` on the stage's run dir, so a pipeline stage is measured exactly as
``jaxalign eval RUN_DIR`` would measure it: the result lands in ``RUN_DIR/eval/NAME.json``
(with the spec it ran with, which tells the runner whether a rerun may reuse it) and in the
stage's metrics sinks.

The pipeline asks one thing more than ``jaxalign eval``: an explicit ``prompts`` set, so every
stage of the results table is measured on the same prompts (``jaxalign eval`` would default to
each run's own eval split, which differs between SFT, reward-model and DPO stages)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from jaxalign.eval.spec import EvalError, EvalSpec, input_digests


def eval_spec(spec: Mapping[str, Any], where: str = "eval") -> dict[str, Any]:
    """``spec`` as a full ``EvalSpec`` (defaults filled in, JSON types); unknown keys, bad values,
    an unknown checker and a missing prompt set are one-line ``ValueError``s naming ``where``."""
    from jaxalign.eval.checkers import get_checker

    try:
        full = EvalSpec.of(spec)
        for name in full.checkers:
            get_checker(name)
    except EvalError as err:
        message = str(err)  # "eval: ..." or "eval.FIELD: ...": the same, under the pipeline's key
        message = f"{where}.{message[5:]}" if message.startswith("eval.") else f"{where}: {message.removeprefix('eval: ')}"
        raise ValueError(message) from None
    if not full.prompts:
        raise ValueError(f"{where}: 'prompts' (a prompt set, e.g. builtin:alignment_prompts#eval) is required: "
                         "every stage is measured on the same prompts")
    return json.loads(json.dumps(dataclasses.asdict(full)))


def is_current(run_dir: str | Path, spec: Mapping[str, Any]) -> bool:
    """``run_dir/eval/NAME.json`` exists and was measured with this very spec, on data files
    with the contents they have now and on the model folders (the evaluated one, a reference,
    a judge, reward models) as they are now: a stage retrained in place, or a judge stage
    rerun, is measured again. A result from before model folders were fingerprinted counts
    as stale."""
    path = Path(run_dir) / "eval" / f"{spec['name']}.json"
    if not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    return (stored.get("spec") == json.loads(json.dumps(dict(spec)))
            and stored.get("inputs", {}) == input_digests(spec, stored.get("target")))
