"""docs/evaluation.md: the worked example (Bradley-Terry from P = 0.9, the KL penalty with
beta = 0.2 on two tokens) through jaxalign's losses, and every YAML example parses."""

from __future__ import annotations

import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
import yaml

from jaxalign.eval import EvalSpec
from jaxalign.losses import LossConfig, RewardInputs, compute_loss
from jaxalign.losses.ppo import kl_estimate, token_rewards
from jaxalign.rl import RewardShaping, parse_reward_specs

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"


def test_worked_example_through_the_loss_api():
    gap = math.log(0.9 / 0.1)
    assert gap == pytest.approx(2.1972, abs=1e-4)
    inputs = RewardInputs(chosen_rewards=jnp.array([gap]), rejected_rewards=jnp.array([0.0]), mask=jnp.ones(1))
    loss, metrics = compute_loss(inputs, LossConfig(name="bradley_terry"))
    assert float(loss) == pytest.approx(-math.log(0.9), rel=1e-5)        # 0.10536
    assert float(metrics["margin"]) == pytest.approx(gap, rel=1e-6)
    # The soft-label loss at P = 0.9 is minimised exactly at that gap: its gradient vanishes there.
    soft = lambda d: compute_loss(RewardInputs(chosen_rewards=d, rejected_rewards=jnp.zeros(1), mask=jnp.ones(1),  # noqa: E731
                                               batch={"preference_strength": jnp.array([0.9])}),
                                  LossConfig(name="bradley_terry"))[0]
    assert float(jax.grad(soft)(jnp.array([gap]))[0]) == pytest.approx(0.0, abs=1e-6)
    kl = kl_estimate(jnp.log(jnp.array([[0.5, 0.8]])), jnp.log(jnp.array([[0.25, 0.4]])))
    rewards, penalty = token_rewards(jnp.array([1.0]), kl, jnp.ones((1, 2)), kl_coef=0.2)
    assert float(kl.sum()) == pytest.approx(math.log(4), rel=1e-6)
    assert -float(penalty.sum()) == pytest.approx(0.2 * math.log(4), rel=1e-6)   # 0.2773
    assert rewards.tolist()[0] == pytest.approx([-0.2 * math.log(2), 1 - 0.2 * math.log(2)], rel=1e-6)
    assert float(rewards.sum()) == pytest.approx(1 - 0.2 * math.log(4), rel=1e-6)  # 0.7227


def test_doc_snippets_run_and_yaml_examples_parse(capsys):
    text = DOC.read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "compute_loss(" in b)
    exec(compile(block, str(DOC), "exec"), {})
    printed = capsys.readouterr().out
    assert "2.197, Bradley-Terry loss = 0.105" in printed and "1.386, penalty = 0.277, objective = 0.723" in printed
    checker = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "register_checker(" in b)
    namespace: dict = {}
    exec(compile(checker, str(DOC), "exec"), namespace)
    assert namespace["mentions_safety"]([{}, {}], ["Stay safe.", "No."]) == {"rate": 0.5}
    examples = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]
    assert len(examples) == 2
    assert EvalSpec.of(examples[0]["eval"]).every_steps == 20
    specs = parse_reward_specs(examples[1]["ppo"]["rewards"])
    assert [s.role for s in specs] == ["train", "gold"]
    assert RewardShaping.of(examples[1]["ppo"]["reward_shaping"]).clip == 4.0
