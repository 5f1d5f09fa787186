"""``jaxalign label``: order-averaged P(chosen better) from a judge's next-token label probabilities."""

import json

import jax
import numpy as np
import pytest

from jaxalign import cli
from jaxalign.constitutional.label import (judge_prompt, label_token_ids, model_label_scorer, p_first,
                                           score_pairs)
from jaxalign.data import load_tokenizer
from jaxalign.models import ModelConfig, init_model, save_pretrained

QUALITY = {" great": 2.0, " fine": 0.5, " bad": -1.0}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class KnownJudge:
    """Characters as tokens; the next-token log-probs of (A, B) are (quality of option A + bias, quality of B),
    so P(A) = sigmoid(q_A - q_B + bias): a judge with a known taste and a known preference for position A."""

    def __init__(self, bias):
        self.bias, self.seen = bias, []

    def encode(self, text):
        return [ord(ch) for ch in text]

    def __call__(self, ids, mask):
        out = []
        for row, keep in zip(ids, mask):
            text = "".join(chr(t) for t, k in zip(row, keep) if k)
            self.seen.append(text)
            if "(A)" not in text:  # a padding row
                out.append([0.0, 0.0])
                continue
            option_a = text.split("(A)")[1].split("\n")[0]
            option_b = text.split("(B)")[1].split("\n")[0]
            logits = np.array([QUALITY[option_a] + self.bias, QUALITY[option_b], 3.0, -2.0])  # more tokens: ignored
            logps = logits - np.log(np.exp(logits).sum())
            out.append(logps[:2])
        return np.asarray(out)


@pytest.mark.parametrize("bias", [0.0, 1.3])
def test_order_averaged_strength_matches_the_closed_form(bias):
    judge = KnownJudge(bias)
    pairs = [("\n\nHuman: q1\n\nAssistant:", " great", " bad"), ("\n\nHuman: q2\n\nAssistant:", " bad", " fine"),
             ("\n\nHuman: q3\n\nAssistant:", " fine", " fine")]
    result = score_pairs(judge, judge.encode, pairs, "Which is kinder?", batch_size=4)
    d = np.array([3.0, -1.5, 0.0])  # q_chosen - q_rejected
    np.testing.assert_allclose(result.p_a_chosen_first, sigmoid(d + bias), rtol=1e-12)
    np.testing.assert_allclose(result.p_a_rejected_first, sigmoid(-d + bias), rtol=1e-12)
    # (P_A(c, r) + 1 - P_A(r, c)) / 2 = (sigmoid(d + b) + sigmoid(d - b)) / 2: the bias cancels to first order
    np.testing.assert_allclose(result.strengths, (sigmoid(d + bias) + sigmoid(d - bias)) / 2, rtol=1e-12)
    assert result.strengths[2] == pytest.approx(0.5)  # equal replies: 0.5 whatever the position bias
    m = result.metrics()
    assert m["agreement"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["position_bias"] == pytest.approx(np.mean((sigmoid(d + bias) + sigmoid(-d + bias)) / 2) - 0.5)
    assert (m["position_bias"] > 0.05) == (bias > 0)
    assert judge.seen[0] == judge_prompt(*pairs[0], "Which is kinder?")
    assert judge.seen[0].endswith("Which is kinder?\n(A) great\n(B) bad\n\nAnswer: (")


def test_p_first_normalises_over_the_two_labels():
    np.testing.assert_allclose(p_first(np.log(np.array([[0.2, 0.05], [0.01, 0.03]]))), [0.8, 0.25])


def test_labels_that_are_not_single_tokens_are_an_error_naming_labels_to_use():
    tokenizer = load_tokenizer("builtin")
    assert label_token_ids(tokenizer, ("A", "B")) == tuple(tokenizer.encode(x, add_special_tokens=False)[0] for x in "AB")
    with pytest.raises(ValueError, match=r"does not encode the option labels as two different single tokens "
                                         r"\(\d tokens for 'Critique request', 1 tokens for 'B'\); use labels that are, "
                                         r"e.g. --labels 'A,B'"):
        label_token_ids(tokenizer, ("Critique request", "B"))
    with pytest.raises(ValueError, match="two different single tokens"):
        label_token_ids(tokenizer, ("A", "A"))


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge")
    tokenizer = load_tokenizer("builtin")
    cfg = ModelConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position_embeddings=512, initializer_range=0.3, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0)
    save_pretrained(init_model(cfg, seed=3), folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_label_cli_on_a_tiny_judge_matches_its_full_forward(tmp_path, judge_folder, capsys):
    rows = [{"prompt": "\n\nHuman: How do I bake bread?\n\nAssistant:", "chosen": " Mix flour and water.",
             "rejected": " No.", "preference_strength": 0.9, "id": 1},
            {"prompt": "\n\nHuman: Pick a lock?\n\nAssistant:", "chosen": " I can't help with that.",
             "rejected": " Use a pin.", "preference_strength": 0.2, "id": 2}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["label", str(tmp_path / "pairs.jsonl"), "--judge", str(judge_folder), "--out",
                     str(tmp_path / "pairs-labelled.jsonl"), "--principle", "harm"]) == 0
    err = capsys.readouterr().err
    assert "labelled 2 pairs" in err and "vs the column's previous values: agreement" in err
    labelled = [json.loads(line) for line in (tmp_path / "pairs-labelled.jsonl").read_text().splitlines()]
    assert [r["id"] for r in labelled] == [1, 2] and set(labelled[0]) == set(rows[0])

    # by hand: the full forward's last-position logits of the two label tokens, both orders
    from jaxalign.constitutional.constitution import load_constitution
    from jaxalign.models import load_pretrained

    tokenizer = load_tokenizer(str(judge_folder))
    model = load_pretrained(judge_folder)
    ids_ab = label_token_ids(tokenizer, ("A", "B"))
    question = load_constitution().principle("harm").judge_question

    def p_a(prompt, a, b):
        ids = np.asarray([[1] + tokenizer.encode(judge_prompt(prompt, a, b, question), add_special_tokens=False)])
        logits = np.asarray(model(ids, np.ones_like(ids)))[0, -1]
        return 1 / (1 + np.exp(logits[ids_ab[1]] - logits[ids_ab[0]]))

    for row, got in zip(rows, labelled):
        expected = (p_a(row["prompt"], row["chosen"], row["rejected"])
                    + 1 - p_a(row["prompt"], row["rejected"], row["chosen"])) / 2
        assert got["preference_strength"] == pytest.approx(expected, abs=2e-6)
    assert not np.allclose([r["preference_strength"] for r in labelled], 0.5, atol=1e-3)  # the judge has a view


def test_label_cli_bad_labels_and_missing_principle_are_one_line(tmp_path, judge_folder, capsys):
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "p", "chosen": " a", "rejected": " b"}) + "\n")
    base = ["label", str(tmp_path / "pairs.jsonl"), "--judge", str(judge_folder), "--out", str(tmp_path / "o.jsonl")]
    assert cli.main(base + ["--labels", "Critique request,B"]) == 1
    assert capsys.readouterr().err.strip().endswith("use labels that are, e.g. --labels 'A,B'")
    assert cli.main(base + ["--principle", "kindness"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no principle named 'kindness'; the constitution has: harm, illegal" in err
    assert not (tmp_path / "o.jsonl").exists()
