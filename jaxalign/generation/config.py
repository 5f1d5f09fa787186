"""``SamplingConfig``: how the sampler picks tokens and when it stops."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static settings of one compiled sampler (each distinct config compiles once per shape).

    The sampling distribution is built as transformers builds it: logits
    divided by ``temperature``, then the ``top_k`` largest kept, then the
    smallest set of most likely tokens whose probability reaches ``top_p``
    (renormalised within the top k when both are set).

    - ``temperature``: 0 means greedy (argmax; ``top_k``/``top_p`` are then moot).
    - ``top_k``: 0 = off. ``top_p``: 1.0 = off.
    - ``stop_token_ids``: a row stops after emitting any of these; with
      ``stop_at_eos`` the model config's ``eos_token_id`` (one id or several)
      is added to them.
    - ``pad_token_id``: written in the token slots after a row has stopped.
    - ``slots``: rows decoded at once (continuous batching: a row that stops hands its
      slot to the next prompt's row). 0 = every row at once, in one program (what a
      static batch does). Results do not depend on it (see docs/generation.md);
      with a mesh it must be a multiple of the batch axes' size.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    stop_at_eos: bool = True
    pad_token_id: int = 0
    slots: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.slots < 0:
            problems.append(f"slots must be >= 1 (rows decoded at once), or 0 for every row at once, got {self.slots}")
        if problems:
            raise ValueError("SamplingConfig: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
