"""Stages chained by their exports (SFT -> reward model -> PPO | DPO), resumable, evaluated
after each stage, summarised in one table: ``jaxalign pipeline CONFIG``."""

from jaxalign.pipeline.config import Pipeline, PipelineError, Stage, load_pipeline
from jaxalign.pipeline.runner import PipelineRun, PipelineStopped, run_pipeline

__all__ = ["Pipeline", "PipelineError", "PipelineRun", "PipelineStopped", "Stage", "load_pipeline",
           "run_pipeline"]
