"""A user's own losses, imported by tests/test_losses.py as "user_losses_helper:<function>".

Not a test module: pytest collects only test_*.py.
"""

import jax
import jax.numpy as jnp

import jaxalign
from jaxalign.losses import LossConfig, LossTerms, PreferenceInputs


@jaxalign.register_loss("test_user_margin_loss", needs_reference=False)
def margin_loss(inputs: PreferenceInputs, cfg: LossConfig) -> LossTerms:
    """Reference-free logistic loss on a margin read from cfg.options."""
    gap = inputs.policy_chosen_logps - inputs.policy_rejected_logps - cfg.options.get("margin", 0.0)
    return LossTerms(-jax.nn.log_sigmoid(cfg.beta * gap), {"user/gap": gap})


def unregistered_loss(inputs: PreferenceInputs, cfg: LossConfig) -> jax.Array:
    """Plain function, never registered: the decorator's defaults apply."""
    chosen = inputs.policy_chosen_logps - inputs.ref_chosen_logps
    rejected = inputs.policy_rejected_logps - inputs.ref_rejected_logps
    return jnp.square(cfg.beta * (chosen - rejected) - 1.0)


NOT_CALLABLE = 3
