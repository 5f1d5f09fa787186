"""Evaluation during training: a run config's ``eval:`` section (an ``EvalSpec``) runs every
``every_steps`` optimizer steps and once at the end, so its metrics form curves
(``eval/NAME/...`` in the run's sinks at each step) and ``RUN_DIR/eval/NAME.json`` holds the
latest result.

The model is handed over the way every algorithm already exports it: ``AlgoRun.export``
writes it (with the tokenizer) to a scratch folder under ``RUN_DIR/eval/``, which is
evaluated and removed; at the end of the run the exported folder itself is evaluated. So
any algorithm, present or future, gets evaluation without code of its own. Only process 0
evaluates (on its local devices); the others wait at the export like at any export."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from jaxalign.eval.api import evaluate_resolved
from jaxalign.eval.spec import EvalSpec
from jaxalign.eval.target import Target, folder_kind
from jaxalign.metrics_log import get_logger

log = get_logger()


class TrainingEvaluator:
    def __init__(self, cfg: Any, run_dir: Path, tokenizer: Any, export: Callable[[Any, str], None], sinks: Any,
                 is_main: bool):
        self.cfg, self.spec = cfg, EvalSpec.of(cfg.eval)
        self.run_dir, self.tokenizer, self.export, self.sinks, self.is_main = run_dir, tokenizer, export, sinks, is_main

    def due(self, step: int, total_steps: int) -> bool:
        return bool(self.spec.every_steps) and step % self.spec.every_steps == 0 and step < total_steps

    def run(self, step: int, state: Any) -> dict[str, float]:
        """Exports ``state``'s model to a scratch folder, evaluates it, publishes at ``step``."""
        scratch = self.run_dir / "eval" / f".model-step_{step:08d}"
        self.export(state, str(scratch))
        try:
            if not self.is_main:
                return {}
            self.tokenizer.save_pretrained(scratch)
            return self.run_on(scratch, step)
        finally:
            if self.is_main:
                shutil.rmtree(scratch, ignore_errors=True)

    def run_on(self, folder: Path, step: int) -> dict[str, float]:
        """Evaluates the model in ``folder`` (e.g. the final export) as the run's step ``step``."""
        if not self.is_main:
            return {}
        target = Target(Path(folder), folder_kind(Path(folder)), self.run_dir, self.cfg, step)
        result = evaluate_resolved(target, self.spec, sinks=self.sinks)
        log.info("eval %s at step %d: %s", self.spec.name, step,
                 ", ".join(f"{k}={v:.4g}" for k, v in list(result["metrics"].items())[:6]))
        return result["metrics"]
