"""Rows on disk -> packed, resumable numpy batches (see docs/data.md).

``build_pipeline(cfg, tokenizer, split=..., kind=...)`` is the entry point;
the pieces it composes are public for tests and custom pipelines.
"""

from typing import TYPE_CHECKING

from jaxalign.lazy_exports import lazy_exports

if TYPE_CHECKING:  # the exports, imported on first use (jaxalign.lazy_exports)
    from jaxalign.data.config import DataConfig
    from jaxalign.data.errors import DataError
    from jaxalign.data.formats import TextExample, detect_format, implicit_prompt
    from jaxalign.data.packing import batch_shape, pack_examples, pack_prompts, pad_batch, unpack
    from jaxalign.data.pipeline import DataPipeline, build_pipeline
    from jaxalign.data.rows import ExampleRows, split_examples, split_rows
    from jaxalign.data.tokenize import ExampleTokenizer, TokenizedExample, load_tokenizer

__all__ = [
    "DataConfig", "DataError", "DataPipeline", "ExampleRows", "ExampleTokenizer", "TextExample",
    "TokenizedExample", "batch_shape", "build_pipeline", "detect_format", "implicit_prompt",
    "load_tokenizer", "pack_examples", "pack_prompts", "pad_batch", "split_examples", "split_rows", "unpack",
]
__getattr__, __dir__ = lazy_exports(__name__, __file__)
