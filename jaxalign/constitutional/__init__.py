"""Constitutional AI: critique -> revision data from a policy and a constitution
(``jaxalign constitutional``), and AI preference labels from a judge (``jaxalign label``).
See docs/constitutional.md."""

from typing import TYPE_CHECKING

from jaxalign.lazy_exports import lazy_exports

if TYPE_CHECKING:  # the exports, imported on first use (jaxalign.lazy_exports)
    from jaxalign.constitutional.config import ConstitutionalConfig, load_constitutional_config
    from jaxalign.constitutional.constitution import (Constitution, ConstitutionError, Example, Principle,
                                                      load_constitution)
    from jaxalign.constitutional.loop import ConstitutionalRun, pick_principle, read_prompt_rows, run_constitutional
    from jaxalign.constitutional.summary import Totals, format_summary

__all__ = [
    "Constitution", "ConstitutionError", "ConstitutionalConfig", "ConstitutionalRun", "Example", "Principle",
    "Totals", "format_summary", "load_constitution", "load_constitutional_config", "pick_principle",
    "read_prompt_rows", "run_constitutional",
]
__getattr__, __dir__ = lazy_exports(__name__, __file__)
