"""Reward functions for tests/test_grpo.py."""


def parity_on_sums(prompts, completions, **kwargs):
    """On sums: 1 for replies of even character length, else 0 (random replies differ); on
    products: always 0 (every group's rewards are equal, which dynamic sampling drops); on
    differences ("minus"): None, not applicable (those groups are unscored)."""
    scores = []
    for prompt, completion in zip(prompts, completions):
        if "minus" in prompt:
            scores.append(None)
        else:
            scores.append(float(len(completion) % 2 == 0) if "+" in prompt else 0.0)
    return scores


def length_mod_5(prompts, completions, **kwargs):
    """The reply's character count mod 5, over 4: differs between most replies of a group, so
    every group has non-zero advantages whatever the sampler drew."""
    return [(len(completion) % 5) / 4 for completion in completions]
