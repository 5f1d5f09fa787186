"""A user's loss that reads a batch column no batch has (tests/test_bad_input.py).

Its own module: importing tests/user_losses_helper.py under a second module
name would register that module's losses twice.
"""

import jax

import jaxalign
from jaxalign.losses import LossConfig, PreferenceInputs


@jaxalign.register_loss("test_reads_a_missing_column", needs_reference=False)
def reads_missing_column(inputs: PreferenceInputs, cfg: LossConfig) -> jax.Array:
    """The error must name the column and the columns there are."""
    return inputs.policy_chosen_logps * inputs.batch["annotator_weight"]
