"""jaxalign eval on tiny random models: reward-model metrics and the DPO family's implicit reward
against transformers, policy metrics through the rollout layer, the statistics by hand, the
result file and sinks, targets (folder, run dir, config) and bad input as one clear line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxalign.cli import main
from jaxalign.data import load_tokenizer
from jaxalign.eval import EvalError, EvalSpec, evaluate
from jaxalign.eval import stats
from jaxalign.models import init_model, save_pretrained
from tests.rl_fixtures import bpe_tokenizer, tiny_config

PAIRS = [
    {"prompt": "\n\nHuman: How do I fix a flat tire?\n\nAssistant:", "chosen": " Patch the tube and pump it up.",
     "rejected": " No.", "category": "bike"},
    {"prompt": "\n\nHuman: How do I pick a lock?\n\nAssistant:", "chosen": " I can't help with that.",
     "rejected": " Use a tension wrench and a pick on the pins.", "category": "lock"},
    {"prompt": "\n\nHuman: Tell me about bread.\n\nAssistant:", "chosen": " Bread is flour, water, yeast and salt.",
     "rejected": " Whatever.", "category": "bike"},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    tokenizer = load_tokenizer("builtin:alignment")
    for name, seed, head in (("policy", 1, "causal_lm"), ("ref", 2, "causal_lm"), ("rm", 3, "score")):
        extra = {"eos_token_id": tokenizer.eos_token_id} if head == "causal_lm" else {}
        save_pretrained(init_model(tiny_config(len(tokenizer), **extra), head=head, seed=seed), root / name)
        tokenizer.save_pretrained(root / name)
    other = bpe_tokenizer([row["prompt"] + row["chosen"] + row["rejected"] for row in PAIRS] * 5)
    save_pretrained(init_model(tiny_config(len(other)), head="score", seed=4), root / "rm_bpe")
    other.save_pretrained(root / "rm_bpe")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    return {name: str(root / name) for name in ("policy", "ref", "rm", "rm_bpe", "pairs.jsonl")} | {"root": root}


def _hf_tokens(folder: str, prompt: str, reply: str) -> list[int]:
    """Prompt + reply + EOS as training tokenizes a pair (BOS when the tokenizer adds one)."""
    tokenizer = load_tokenizer(folder)
    bos = [tokenizer.bos_token_id] if tokenizer(prompt)["input_ids"][:1] == [tokenizer.bos_token_id] else []
    return (bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
            + tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])


def test_statistics_by_hand():
    # Two prompts with replies valued (1, 3) and (5,): mean over replies 3; per-prompt means 2 and 5,
    # weights 2/3 and 1/3: variance = ((2/3)^2 (2-3)^2 + (1/3)^2 (5-3)^2) x 2/1 = 16/9.
    mean, se = stats.mean_and_se(np.array([1.0, 3.0, 5.0]), np.array([0, 0, 1]))
    assert mean == 3.0 and se == pytest.approx(4 / 3)
    np.testing.assert_array_equal(stats.win_outcomes([2, 1, 1], [1, 1, 3]), [1.0, 0.5, 0.0])
    # Margins logit(0.9) twice and -logit(0.9) once: both orders give p = 0.9 (outcomes 1, 1, 0) and
    # p = 0.1 (outcomes 0, 0, 1): observed 2/3 at 0.9 and 1/3 at 0.1; ECE = |2/3 - 0.9| = 0.2333.
    logit = math.log(9)
    table, ece = stats.reliability(np.array([logit, logit, -logit]), bins=4)
    np.testing.assert_allclose(table["predicted"], [0.1, 0.9])
    np.testing.assert_allclose(table["observed"], [1 / 3, 2 / 3])
    assert table["count"] == [3, 3] and ece == pytest.approx(0.9 - 2 / 3)
    assert stats.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 7])[0, 1])
    assert math.isnan(stats.pearson([1, 1], [2, 3]))


def test_reward_model_eval_matches_transformers_and_writes_result(folders, tmp_path, capsys):
    import torch
    from transformers import AutoModelForSequenceClassification

    result = evaluate(folders["rm"], {"name": "rm", "pairs": folders["pairs.jsonl"], "output_dir": str(tmp_path)})
    hf = AutoModelForSequenceClassification.from_pretrained(folders["rm"]).eval()
    expected = []
    for row in PAIRS:
        for reply in (row["chosen"], row["rejected"]):
            ids = torch.tensor([_hf_tokens(folders["rm"], row["prompt"], reply)])
            with torch.no_grad():
                expected.append(float(hf(ids).logits[0, 0]))
    chosen, rejected = np.array(expected[0::2]), np.array(expected[1::2])
    np.testing.assert_allclose(result["chosen_rewards"], chosen, atol=1e-4)
    np.testing.assert_allclose(result["rejected_rewards"], rejected, atol=1e-4)
    metrics = result["metrics"]
    assert metrics["accuracy"] == pytest.approx(np.mean(chosen > rejected))
    assert metrics["margin"] == pytest.approx(np.mean(chosen - rejected), abs=1e-5)
    assert metrics["accuracy/lock"] == float(chosen[1] > rejected[1])
    assert metrics["ece"] == pytest.approx(stats.reliability(chosen - rejected)[1], abs=1e-5)
    assert sum(result["reliability"]["count"]) == 6
    written = json.loads((tmp_path / "eval" / "rm.json").read_text())
    assert written["metrics"]["accuracy"] == metrics["accuracy"] and written["kind"] == "reward_model"
    assert not [p for p in (tmp_path / "eval").iterdir() if p.name.startswith(".")]  # no temporary left
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["eval/rm/accuracy"] == metrics["accuracy"]
    capsys.readouterr()
    assert main(["eval", folders["rm"], "--pairs", folders["pairs.jsonl"], "--out", str(tmp_path), "--name", "cli"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "cli" and printed["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-5)
    assert (tmp_path / "eval" / "cli.json").is_file()


def test_implicit_reward_matches_transformers(folders, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    result = evaluate(folders["policy"], {"kind": "implicit_reward", "pairs": folders["pairs.jsonl"],
                                          "reference": folders["ref"], "beta": 0.5}, write=False)

    def logp(folder, prompt, reply):
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        prompt_len = len(_hf_tokens(folder, prompt, "")) - 1  # without the EOS
        ids = _hf_tokens(folder, prompt, reply)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        logps = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        return float(logps[prompt_len - 1:].sum())

    row = PAIRS[0]
    expected = [0.5 * (logp(folders["policy"], row["prompt"], reply) - logp(folders["ref"], row["prompt"], reply))
                for reply in (row["chosen"], row["rejected"])]
    assert result["chosen_rewards"][0] == pytest.approx(expected[0], abs=1e-3)
    assert result["rejected_rewards"][0] == pytest.approx(expected[1], abs=1e-3)
    # What it read, for a rerun to tell changed inputs apart: the pair file, the reference, the policy.
    assert set(result["inputs"]) == {"pairs", f"model:{folders['ref']}", "target"}
    chosen, rejected = np.array(result["chosen_rewards"]), np.array(result["rejected_rewards"])
    metrics = result["metrics"]
    assert metrics["rewards/margins"] == pytest.approx(np.mean(chosen - rejected))
    assert metrics["rewards/accuracies"] == pytest.approx(np.mean(stats.win_outcomes(chosen, rejected)))
    same = evaluate(folders["policy"], {"kind": "implicit_reward", "pairs": folders["pairs.jsonl"],
                                        "reference": folders["policy"]}, write=False)
    assert same["metrics"]["rewards/margins"] == 0.0 and same["metrics"]["rewards/accuracies"] == 0.5  # ties: half


def test_policy_eval_reward_gold_kl_win_rate_checkers(folders, tmp_path):
    spec = {"name": "policy", "prompts": "builtin:alignment_prompts#eval", "max_prompts": 5, "num_generations": 2,
            "max_new_tokens": 6, "batch_size": 4, "checkers": ["alignment"], "output_dir": str(tmp_path),
            "rewards": [folders["rm_bpe"], {"function": "jaxalign.tasks.alignment:gold", "role": "gold"}],
            "reference": folders["policy"], "judge": folders["rm"]}
    result = evaluate(folders["policy"], spec)
    metrics = result["metrics"]
    assert metrics["prompts"] == 5 and metrics["replies"] == 10
    assert metrics["kl"] == 0.0 and metrics["kl_se"] == 0.0          # the reference is the policy itself
    assert 0.0 <= metrics["win_rate"] <= 1.0 and metrics["win_rate_se"] >= 0
    assert metrics["gold/reward"] == pytest.approx(-1.0)               # random words neither decline nor help
    assert metrics["reward"] == pytest.approx(metrics["rewards/rm_bpe/mean"])   # the gold source is not in it
    assert metrics["reward"] != 0.0                                    # scored through the re-tokenized text
    assert metrics["alignment/decline_rate"] == 0.0 and "alignment/help_rate" in metrics
    assert metrics["truncation_rate"] <= 1.0 and 0 < metrics["mean_length"] <= 6
    assert len(result["samples"]) == 10 and (tmp_path / "eval" / "policy.json").is_file()


@pytest.mark.slow  # ~30 s: two policy evaluations
def test_run_dir_and_config_targets_use_the_run_defaults(folders, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(folders["policy"], run_dir / "export")
    config = tmp_path / "sft.yaml"
    config.write_text(f"algo: sft\nrun_dir: {run_dir}\nmodel: {{path: {folders['ref']}}}\n"
                      "data: {train: builtin:alignment_sft, eval: builtin:alignment_prompts#eval}\n")
    shutil.copy(config, run_dir / "config.yaml")
    (run_dir / "events.jsonl").write_text(json.dumps({"time": 0, "step": 40, "kind": "finish"}) + "\n")
    spec = {"max_prompts": 2, "num_generations": 1, "max_new_tokens": 4, "name": "end"}
    from_run = evaluate(run_dir, spec)
    assert from_run["step"] == 40 and (run_dir / "eval" / "end.json").is_file()
    assert "kl" in from_run["metrics"] and from_run["metrics"]["prompts"] == 2  # reference: model.path (the start)
    from_config = evaluate(config, {**spec, "name": "again"}, write=False)
    assert from_config["metrics"]["kl"] == pytest.approx(from_run["metrics"]["kl"], rel=1e-5)


@pytest.mark.parametrize("case", ["empty_prompts", "missing_split", "reward_model_as_policy",
                                  "reward_model_as_reference", "no_target", "unknown_key", "no_prompts"])
def test_bad_input_is_one_clear_line(folders, tmp_path, capsys, case):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args, expected = {
        "empty_prompts": ([folders["policy"], "--prompts", str(empty)], f"{empty} is empty"),
        "missing_split": ([folders["policy"], "--prompts", "builtin:alignment_prompts#test"],
                          "built-in datasets have splits train, eval, not 'test'"),
        "reward_model_as_policy": ([folders["rm"], "--kind", "policy", "--prompts", "builtin:alignment_prompts#eval"],
                                   f"the evaluated policy {folders['rm']} is a reward model, but a policy"),
        "reward_model_as_reference": ([folders["policy"], "--prompts", "builtin:alignment_prompts#eval",
                                       "--reference", folders["rm"]], "eval.reference"),
        "no_target": ([str(tmp_path / "nothing")], "no such file or folder"),
        "unknown_key": ([folders["policy"], "--set", "num_generation=2"], "did you mean 'num_generations'"),
        "no_prompts": ([folders["policy"]], "no eval.prompts given"),
    }[case]
    assert main(["eval", *args, "--max-prompts", "1", "-n", "1", "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxalign: error: eval") and expected in err and "\n" not in err, err
    with pytest.raises(EvalError):
        EvalSpec.of({"kind": "judge"})
