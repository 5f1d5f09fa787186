"""Reward functions for tests/test_ppo.py (loaded by file path: ``tests/ppo_rewards_helper.py:NAME``)."""

from __future__ import annotations


def raises(prompts, completions, **columns):
    raise ZeroDivisionError("boom")


def wrong_length(prompts, completions, **columns):
    return [0.0] * (len(completions) + 1)


def nan(prompts, completions, **columns):
    return [float("nan")] * len(completions)


def not_a_number(prompts, completions, **columns):
    return ["good"] * len(completions)


def sees_columns(prompts, completions, category, chosen, **columns):
    assert len(category) == len(prompts) == len(chosen) == len(completions)
    assert all(isinstance(c, str) for c in category), category
    return [0.0] * len(completions)


def brevity(prompts, completions, **columns):
    """A strong, easy signal for the learning test: shorter replies score higher."""
    return [-min(len(text.split()), 12) / 12.0 for text in completions]


def vowel_words(prompts, completions, **columns):
    """A dense content reward for the learning test: the share of a reply's words that start
    with a vowel, over at least 6 words (so ending the reply early never pays).

    A random tiny policy scores about 0.1-0.2 and can raise it by shifting probability
    mass toward the many vowel-initial tokens, one token at a time."""
    scores = []
    for text in completions:
        words = text.split()
        scores.append(sum(word[0].lower() in "aeiou" for word in words) / max(len(words), 6))
    return scores


# The same failures from the third call on (the third iteration's rollout), after two good steps.
def _third_call(bad):
    calls = {"count": 0}  # per function: a loaded module may be reused by later runs in the same process

    def reward(prompts, completions, **columns):
        calls["count"] += 1
        return bad(prompts, completions, **columns) if calls["count"] >= 3 else [0.1] * len(completions)
    reward.__name__ = f"{bad.__name__}_on_third_call"
    return reward


raises_on_third_call = _third_call(raises)
wrong_length_on_third_call = _third_call(wrong_length)
nan_on_third_call = _third_call(nan)
not_a_number_on_third_call = _third_call(not_a_number)
