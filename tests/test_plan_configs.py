"""Every YAML config shipped under configs/ loads with the strict config loader
(unknown keys, bad values and typos fail here, not on a pod)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxalign.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").rglob("*.yaml"))


def test_the_config_folder_is_found():
    assert len(CONFIGS) >= 6 and any(path.parent.name == "examples" for path in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: str(path.relative_to(path.parents[1])))
def test_config_loads(path):
    if path.parent.name == "constitutional" and path.name.startswith("cai"):  # `jaxalign constitutional` configs
        from jaxalign.constitutional import load_constitutional_config

        assert load_constitutional_config(path).rounds >= 1
        return
    if path.parent.name == "pipelines":  # `jaxalign pipeline` configs: every stage's config loads
        from jaxalign.pipeline.config import load_pipeline

        stages = load_pipeline(path, sweeps=True).stages
        assert stages and all(load_config(stage.config, stage.overrides).algo for stage in stages)
        return
    cfg = load_config(path)
    assert cfg.algo in ("rm", "sft", "dpo", "ppo", "grpo")
