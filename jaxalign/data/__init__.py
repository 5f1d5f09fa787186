"""Rows on disk -> packed, resumable numpy batches (see docs/data.md).

``build_pipeline(cfg, tokenizer, split=..., kind=...)`` is the entry point;
the pieces it composes are public for tests and custom pipelines.
"""

from jaxalign.lazy_exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "jaxalign.data.config": ["DataConfig"],
    "jaxalign.data.errors": ["DataError"],
    "jaxalign.data.formats": ["TextExample", "detect_format", "implicit_prompt"],
    "jaxalign.data.packing": ["batch_shape", "pack_examples", "pack_prompts", "pad_batch", "unpack"],
    "jaxalign.data.pipeline": ["DataPipeline", "build_pipeline"],
    "jaxalign.data.rows": ["ExampleRows", "split_examples", "split_rows"],
    "jaxalign.data.tokenize": ["ExampleTokenizer", "TokenizedExample", "load_tokenizer"],
})
