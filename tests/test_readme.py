"""The README's commands and code blocks work as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_set_up_commands_install_and_name_existing_configs():
    commands = " ".join(_blocks("bash"))
    assert "pip install -e ." in commands and 'pip install -e ".[test]"' in commands
    assert "python -m pytest -q" in commands
    for config in re.findall(r"jaxalign train (\S+\.yaml)", commands):
        assert (ROOT / config).is_file(), config


def test_custom_loss_block_registers_a_working_loss():
    import jax.numpy as jnp

    from jaxalign.losses import LossConfig, PreferenceInputs, build_loss

    block = next(b for b in _blocks("python") if "register_loss" in b)
    exec(compile(block, "README.md", "exec"), {})
    inputs = PreferenceInputs(
        policy_chosen_logps=jnp.array([-1.0, -2.0]), policy_rejected_logps=jnp.array([-3.0, -1.0]),
        chosen_lengths=jnp.ones(2), rejected_lengths=jnp.ones(2), mask=jnp.ones(2),
    )
    loss, _ = build_loss(LossConfig(name="my_loss", beta=1.0))(inputs).result()
    expected = (jnp.log1p(jnp.exp(-2.0)) + jnp.log1p(jnp.exp(1.0))) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.slow
def test_train_from_python_block(tmp_path, monkeypatch):
    block = next(b for b in _blocks("python") if "from jaxalign.trainer import train" in b)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)  # the block's run_dir is relative: keep it out of the checkout
    block = block.replace('"max_steps=20"', '"max_steps=6", "eval_batches=1"')
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert 0.0 <= namespace["result"]["eval"]["rewards/accuracies"] <= 1.0
    assert (tmp_path / "runs" / "quickstart-dpo" / "export" / "config.json").exists()
    os.chdir(ROOT)
