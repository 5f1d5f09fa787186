"""``jaxalign constitutional CONFIG``: the run's settings (YAML, strict keys, ``--set`` overrides)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

from jaxalign import configlib

PRINCIPLE_ORDERS = ("random", "cycle")
# The transcript's own markers: a model that runs on past its turn writes one of these next,
# so the text is cut there (the sampler stops on single tokens only).
DEFAULT_STOP_STRINGS = ("\n\nHuman:", "\n\nAssistant:", "\n\nCritique request:", "\n\nRevision request:",
                        "\n\nCritique:", "\n\nRevision:", "\n\n-----")


@dataclasses.dataclass
class ConstitutionalConfig:
    """What ``jaxalign constitutional`` reads (see docs/constitutional.md).

    - ``model``: the policy, a Hugging Face folder (a run's ``export/``) with its tokenizer.
    - ``prompts``: red-team prompts, any dataset spec the data layer reads (a JSONL file,
      ``builtin:alignment_prompts#train``, a hub name); only each row's prompt is used and
      its other columns are carried into the outputs.
    - ``constitution``: YAML file (default: the shipped ``default.yaml``).
    - ``few_shot``: put the constitution's examples before every critique and revision
      prompt (default). Turn it off for a model that learned the format in training (the
      built-in task's ``builtin:alignment_cai_sft`` model), which saves their tokens.
    - ``rounds``: critique -> revision rounds per prompt; ``principle_order``: ``random``
      (seeded per prompt and round) or ``cycle`` (prompt i's round r uses principle (i + r) mod P).
    - ``max_*_tokens``: new tokens per stage; ``max_prompt_tokens``: longer prompts keep
      their end; ``max_transcript_tokens``: the model's whole input (few-shot prefix + the row's
      transcript) plus the next critique and revision; a row that would pass it stops revising
      (its last revision stands; counted in the summary).
    - ``stop_tokens``: extra stop tokens (strings the tokenizer encodes as one token; EOS
      always stops); ``stop_strings``: generated text is cut at the first of these.
    """

    model: str
    prompts: str
    out_dir: str
    constitution: str | None = None
    few_shot: bool = True
    rounds: int = 1
    principle_order: str = "random"
    seed: int = 0
    batch_size: int = 16
    max_prompts: int | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_reply_tokens: int = 128
    max_critique_tokens: int = 64
    max_revision_tokens: int = 128
    max_prompt_tokens: int = 512
    max_transcript_tokens: int = 1024
    stop_tokens: list[str] = dataclasses.field(default_factory=list)
    stop_strings: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_STOP_STRINGS))
    dtype: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.rounds < 1:
            problems.append(f"rounds must be >= 1, got {self.rounds}")
        if self.principle_order not in PRINCIPLE_ORDERS:
            problems.append(f"principle_order must be one of {', '.join(PRINCIPLE_ORDERS)}, got {self.principle_order!r}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_prompts is not None and self.max_prompts < 1:
            problems.append(f"max_prompts must be >= 1 (or unset for all), got {self.max_prompts}")
        for name in ("max_reply_tokens", "max_critique_tokens", "max_revision_tokens", "max_prompt_tokens",
                     "max_transcript_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise configlib.ConfigError("; ".join(problems))

    def output_settings(self) -> dict:
        """The settings that decide what a row looks like: a resumed run must have the same ones
        (``out_dir`` and ``max_prompts`` may change: more prompts extend the same outputs)."""
        settings = dataclasses.asdict(self)
        for free in ("out_dir", "max_prompts"):
            settings.pop(free)
        return settings


def load_constitutional_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ConstitutionalConfig:
    """The config from YAML and ``--set`` overrides; errors (``ConfigError``) name the file and key."""
    try:
        return configlib.load(ConstitutionalConfig, path, overrides)
    except configlib.ConfigError as err:
        text = str(err)
        raise configlib.ConfigError(text if path is None or str(path) in text else f"{path}: {text}") from err
