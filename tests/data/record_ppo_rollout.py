"""Records tests/data/ppo_rollout_per_row_keys.npz: the rollout that tests/test_ppo_fixture.py's
stored prompts, parameters and key give since the sampler draws each row's tokens from its own key
(``fold_in(fold_in(rng, row), step)``, continuous batching). The original rollout (one key per step
for the whole batch, commit c23f918) stays in ppo_fixed_rollout.npz as the train step's input.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python tests/data/record_ppo_rollout.py tests/data/ppo_rollout_per_row_keys.npz
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(out: str) -> None:
    from tests.test_ppo_fixture import rollout_from_stored_prompts

    with tempfile.TemporaryDirectory() as run_dir:
        rollout = rollout_from_stored_prompts(Path(run_dir))
        np.savez_compressed(out, **{name: np.asarray(jax.device_get(value)) for name, value in rollout.items()})


if __name__ == "__main__":
    main(sys.argv[1])
