"""``DataConfig``: where the rows come from and how they become batches."""

from __future__ import annotations

import dataclasses

FORMATS = (
    "auto",
    "preference",  # prompt, chosen, rejected
    "implicit_preference",  # chosen, rejected (prompt = their common beginning)
    "ratings",  # prompt, responses, scores
    "ranking",  # prompt, ranking (best first)
    "rating",  # prompt, completion, rating (one reply rated on data.rating_scale)
    "critique",  # prompt, response, critique[, revision]
    "unpaired",  # prompt, completion, label
    "prompt_completion",  # prompt, completion
    "messages",  # messages
    "text",  # text
    "prompt_only",  # prompt
)
BAD_ROW_POLICIES = ("raise", "skip")
OVERLONG_POLICIES = ("truncate", "drop", "raise")
RATING_NORMALIZATIONS = ("scale", "per_annotator")
CRITIQUE_SFT_MODES = ("revise", "revision", "critique")
WEIGHT_BY = ("none", "agreement")


@dataclasses.dataclass
class AnnotatorConfig:
    """``data.annotators``: who labelled each row, and how much to trust them (docs/feedback.md).

    column: the row column naming the annotator (rows without it have none).
    weight_by: ``agreement`` multiplies each training example's weight by its
      annotator's reliability, ``max(0, kappa)^2`` of their chance-corrected agreement
      with the reliability-weighted majority (``jaxalign.data.annotators``); ``none`` leaves weights alone.
    min_agreement: training rows of annotators whose agreement with the majority
      is below this are left out (counted and logged); 0 keeps everyone.
    """

    column: str = "annotator"
    weight_by: str = "none"
    min_agreement: float = 0.0

    def __post_init__(self) -> None:
        if self.weight_by not in WEIGHT_BY:
            raise ValueError(f"data.annotators.weight_by must be one of {', '.join(WEIGHT_BY)}, got '{self.weight_by}'")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"data.annotators.min_agreement must be in [0, 1], got {self.min_agreement}")
        if not self.column:
            raise ValueError("data.annotators.column must name a row column")

    @property
    def active(self) -> bool:
        return self.weight_by != "none" or self.min_agreement > 0


@dataclasses.dataclass
class DataConfig:
    """The ``data:`` section of a run config.

    Dataset specs (``train``, ``eval``) are one of: a local ``.jsonl``,
    ``.jsonl.gz``, ``.json`` or ``.parquet`` file; ``builtin:NAME`` (see
    ``jaxalign.data.builtin``); a Hugging Face hub dataset name or a local
    dataset folder (both read with ``datasets.load_dataset``). Any spec but a
    file may end in ``#SPLIT`` (``builtin:preferences#eval``,
    ``trl-lib/ultrafeedback_binarized#test``); without it the train spec reads
    split ``train``, and the eval spec split ``eval`` of a built-in or
    ``test`` of a hub dataset or folder.
    """

    train: str | None = None
    eval: str | None = None
    # Without an eval spec, hold out this fraction of the train rows (fixed
    # permutation, independent of ``seed``, so the split never moves).
    eval_fraction: float = 0.0
    format: str = "auto"
    batch_size: int = 32  # global examples (pairs) per step, over all processes
    eval_batch_size: int | None = None  # default: batch_size
    max_length: int = 1024  # prompt + completion tokens, for each branch of a pair
    max_prompt_length: int | None = None  # prompts keep their end; None = max_length // 2
    packing: bool = True  # False: one example per row (rows padded to the bucketed length)
    pack_length: int | None = None  # tokens per packed row; default 2*max_length for pairs, else max_length
    pad_to_multiple: int = 64  # row length and target slots are rounded up to this
    # At most this many distinct batch shapes a split (each compiles the step once): batches
    # are padded up to a ladder fitted on the first batches (jaxalign.data.shapes); 0 = no bound.
    max_shapes: int = 8
    # What one more compiled shape costs, in batches of the run (its compile plus its slower
    # first run): the ladder adds a level only where it saves more than this over the run.
    # Measured on 2-core CPUs: 2-3 steps on HH-RLHF (a 10 s compile against a 4.4 s DPO step),
    # 11-12 on the built-in model (5 s against 0.42 s); on a GPU or TPU far more; with a warm
    # compilation cache less. 1 is the optimistic end, kept as the default because at 2 a
    # 5-step reward-model run on HH-RLHF pads every batch to 3 rows (fill 0.77 -> 0.59)
    # (docs/data.md, docs/benchmarks.md).
    compile_cost_batches: float = 1.0
    # Attention computes only the score tiles of a packed row that hold a visible
    # entry (jaxalign.models.tiled_attention); needs pad_to_multiple and
    # pack_length to be multiples of jaxalign.batch.ATTENTION_TILE, else dense.
    sparse_attention: bool = True
    on_bad_row: str = "raise"  # raise | skip (skipped rows are counted, logged per file and in data/skipped_rows)
    max_skipped_fraction: float = 0.1  # on_bad_row: skip fails when more of a file's rows than this are bad
    on_overlong: str = "truncate"  # truncate | drop | raise
    completion_only_loss: bool = True  # SFT: False = loss on every token after the first
    shuffle: bool = True
    seed: int = 0
    num_epochs: int = 1
    # Restart the data epoch instead of restoring the iterator (e.g. after the
    # process count changed, which ties the saved iterator state to the old one).
    reset_iterator_on_restore: bool = False
    # Columns that reach the losses (docs/feedback.md): a per-row weight (finite, >= 0;
    # every preference and reward-model loss is the weighted mean), and a per-pair
    # preference strength P(chosen is better) in [0, 1] (soft labels: bradley_terry's
    # target probability, label smoothing 1 - p for sigmoid/simpo/cpo).
    weight_column: str | None = None
    strength_column: str | None = None
    # The declared scale [lowest, highest] of ratings (rating rows, ratings' scores):
    # ratings outside it are errors; pointwise reward models normalise by it.
    rating_scale: list[float] | None = None
    rating_normalization: str = "scale"  # scale | per_annotator (map each annotator to the pool's mean and spread)
    annotators: AnnotatorConfig = dataclasses.field(default_factory=AnnotatorConfig)
    critique_sft: str = "revise"  # critique rows as SFT: revise (critique-conditioned) | revision | critique
    read_threads: int = 2  # Grain threads that tokenize and pack ahead of the step
    prefetch_batches: int = 4  # packed batches buffered ahead

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"data: {message}")

        if self.format not in FORMATS:
            fail(f"format must be one of {', '.join(FORMATS)}, got '{self.format}'")
        if self.on_bad_row not in BAD_ROW_POLICIES:
            fail(f"on_bad_row must be one of {', '.join(BAD_ROW_POLICIES)}, got '{self.on_bad_row}'")
        if self.on_overlong not in OVERLONG_POLICIES:
            fail(f"on_overlong must be one of {', '.join(OVERLONG_POLICIES)}, got '{self.on_overlong}'")
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            fail(f"max_skipped_fraction must be in [0, 1], got {self.max_skipped_fraction}")
        if not 0.0 <= self.eval_fraction < 1.0:
            fail(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.eval is not None and self.eval_fraction > 0:
            fail("set either eval (a dataset spec) or eval_fraction (carve it from train), not both")
        if self.max_length < 2:
            fail(f"max_length must be >= 2 (a prompt token and a completion token), got {self.max_length}")
        for name in ("batch_size", "max_length", "pad_to_multiple", "num_epochs", "prefetch_batches"):
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_shapes < 0:
            fail(f"max_shapes must be >= 0 (0 = no bound), got {self.max_shapes}")
        if not self.compile_cost_batches >= 0:  # also catches NaN
            fail(f"compile_cost_batches must be >= 0 (batches a new compiled shape costs), got {self.compile_cost_batches}")
        if self.read_threads < 0:
            fail(f"read_threads must be >= 0, got {self.read_threads}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            fail(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.max_prompt_length is not None and not 1 <= self.max_prompt_length < self.max_length:
            fail(
                f"max_prompt_length must be between 1 and max_length - 1 = {self.max_length - 1} "
                f"(a completion needs at least one token), got {self.max_prompt_length}"
            )
        if self.pack_length is not None and self.pack_length < 2:
            fail(f"pack_length must be >= 2, got {self.pack_length}")
        if self.rating_scale is not None:
            scale = self.rating_scale
            if (not isinstance(scale, (list, tuple)) or len(scale) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
                    or not scale[0] < scale[1]):
                fail(f"rating_scale must be [lowest, highest] with lowest < highest, e.g. [1, 5]; got {scale!r}")
            self.rating_scale = [float(scale[0]), float(scale[1])]
        if self.rating_normalization not in RATING_NORMALIZATIONS:
            fail(f"rating_normalization must be one of {', '.join(RATING_NORMALIZATIONS)}, got '{self.rating_normalization}'")
        if self.critique_sft not in CRITIQUE_SFT_MODES:
            fail(f"critique_sft must be one of {', '.join(CRITIQUE_SFT_MODES)}, got '{self.critique_sft}'")
        if isinstance(self.annotators, dict):  # built directly from Python with a mapping
            self.annotators = AnnotatorConfig(**self.annotators)
        if not 0 <= self.seed < 2**32:
            fail(f"seed must be in [0, 2**32), got {self.seed}")

    def resolved_max_prompt_length(self) -> int:
        return self.max_prompt_length if self.max_prompt_length is not None else max(1, self.max_length // 2)

    def attention_tile(self, paired: bool, replies: int = 2) -> int | None:
        """Tile size of block-sparse attention, or None for dense masks. Decided
        from the config alone, so every process and every batch agree."""
        from jaxalign.batch import ATTENTION_TILE

        pack_length = self.resolved_pack_length(paired, replies)
        aligned = self.pad_to_multiple % ATTENTION_TILE == 0 and (pack_length == 1 or pack_length % ATTENTION_TILE == 0)
        return ATTENTION_TILE if self.sparse_attention and aligned else None

    def resolved_pack_length(self, paired: bool, replies: int = 2) -> int:
        """Row capacity: a pair stores its prompt once, so two branches fit in 2*max_length
        (``replies`` branches of a ranking in ``replies * max_length``).
        Without packing every example is longer than the capacity of 1, so each gets a row."""
        if not self.packing:
            return 1
        if self.pack_length is not None:
            return self.pack_length
        return max(2, replies) * self.max_length if paired else self.max_length
