"""Constitutional AI: critique -> revision data from a policy and a constitution
(``jaxalign constitutional``), and AI preference labels from a judge (``jaxalign label``).
See docs/constitutional.md."""

from jaxalign.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "jaxalign.constitutional.config": ["ConstitutionalConfig", "load_constitutional_config"],
    "jaxalign.constitutional.constitution": ["Constitution", "ConstitutionError", "Example", "Principle", "load_constitution"],
    "jaxalign.constitutional.loop": ["ConstitutionalRun", "pick_principle", "read_prompt_rows", "run_constitutional"],
    "jaxalign.constitutional.summary": ["Totals", "format_summary"],
})
