"""Built-in datasets and tokenizer for the quickstart: generated, never downloaded.

``builtin:preferences`` is a few hundred templated pairs (``builtin_templates``):
harmful requests whose chosen reply declines and offers honest help, and
benign requests whose chosen reply helps while the rejected one is rude or
useless. The same pairs give ``builtin:sft`` (prompt + chosen reply),
``builtin:kto`` (each pair as a desirable and an undesirable row) and
``builtin:prompts`` (prompts only). Every name has a fixed ``train`` and
``eval`` split (15% held out). Prompts use the HH-RLHF transcript form,
``"\\n\\nHuman: ...\\n\\nAssistant:"``, which is also what the built-in
tokenizer's chat template renders.

The human-feedback sets (annotators, ratings, rankings, critiques) are in
``builtin_feedback.py``; they are rendered with the quickstart tokenizer and
leave it unchanged. The ``builtin:alignment_*`` names are the alignment task of
``alignment.py`` (the walkthrough's data). Each family ships its own tokenizer:
``builtin`` (1,024 tokens, the quickstart text) and ``builtin:alignment``
(2,048 tokens, the alignment task's training phrasings). Regenerate both with
``python -m jaxalign.data.builtin --write-tokenizer``.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
from pathlib import Path
from typing import Any

from jaxalign.data import alignment, alignment_cai, builtin_arithmetic, builtin_feedback
from jaxalign.data import builtin_templates as T

TOKENIZER_DIR = Path(__file__).parent / "builtin" / "tokenizer"
ALIGNMENT_TOKENIZER_DIR = Path(__file__).parent / "builtin" / "alignment_tokenizer"
QUICKSTART_NAMES = ("preferences", "sft", "kto", "prompts")
NAMES = QUICKSTART_NAMES + builtin_feedback.NAMES + alignment.NAMES + alignment_cai.NAMES + builtin_arithmetic.NAMES
SPLITS = ("train", "eval")
EVAL_FRACTION = 0.15
PAIRS_PER_CATEGORY = 36
SEED = 20240601
VOCAB_SIZE = 1024
PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|endoftext|>"  # ids 0, 1, 2
# Renders messages exactly like the built-in rows: "\n\nHuman: ...\n\nAssistant: ...<|endoftext|>".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}"
    "{%- elif message['role'] == 'user' -%}{{ '\\n\\nHuman: ' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}{{ '\\n\\nAssistant: ' + message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n\\nAssistant:' }}{%- endif -%}"
)


def rows(name: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of ``builtin:NAME`` for ``split`` ("train" or "eval")."""
    if name not in NAMES:
        raise ValueError(f"data: unknown built-in dataset 'builtin:{name}'; choose from {', '.join(NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"data: built-in datasets have splits {', '.join(SPLITS)}, not '{split}'")
    if name in builtin_feedback.NAMES:
        return builtin_feedback.rows(name, split)
    if name in alignment.NAMES:
        return alignment.rows(name, split)
    if name in alignment_cai.NAMES:
        return alignment_cai.rows(name, split)
    if name in builtin_arithmetic.NAMES:
        return builtin_arithmetic.rows(name, split)
    pairs = [pair for pair, held_out in _pairs() if held_out == (split == "eval")]
    if name == "preferences":
        return [dict(pair) for pair in pairs]
    if name == "sft":
        return [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]
    if name == "kto":
        return [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
                for p in pairs for side in ("chosen", "rejected")]
    return [{"prompt": p["prompt"]} for p in pairs]


@functools.cache
def _pairs() -> tuple[tuple[dict[str, str], bool], ...]:
    """All pairs with their held-out flag; deterministic (Python's ``random`` with a fixed seed)."""
    rng = random.Random(SEED)
    pairs = []
    for category, spec in T.HARMFUL.items():
        pairs += _category_pairs(rng, category, spec, harmful=True)
    for category, spec in T.BENIGN.items():
        pairs += _category_pairs(rng, category, spec, harmful=False)
    order = list(range(len(pairs)))
    rng.shuffle(order)  # interleaves categories; the first 15% of the order is held out
    held_out = round(len(pairs) * EVAL_FRACTION)
    return tuple((pairs[index], rank < held_out) for rank, index in enumerate(order))


def _category_pairs(rng: random.Random, category: str, spec: dict, harmful: bool) -> list[dict[str, str]]:
    fillers = spec["fillers"] if harmful else tuple(spec["answers"])
    combos = [(request, filler) for request in spec["requests"] for filler in fillers]
    rng.shuffle(combos)
    pairs, seen = [], set()
    attempts = 0
    while len(pairs) < PAIRS_PER_CATEGORY and attempts < 20 * PAIRS_PER_CATEGORY:
        request, filler = combos[attempts % len(combos)]
        attempts += 1
        prompt = f"\n\nHuman: {_phrase(rng, request.format(x=filler))}\n\nAssistant:"
        if prompt in seen:
            continue
        seen.add(prompt)
        if harmful:
            chosen = " ".join([rng.choice(T.DECLINE_OPENERS), rng.choice(spec["reasons"]), rng.choice(spec["offers"])])
            rejected = " ".join([rng.choice(T.COMPLY_OPENERS), rng.choice(spec["comply"])])
        else:
            chosen = " ".join(filter(None, [rng.choice(T.HELP_OPENERS), spec["answers"][filler], rng.choice(T.HELP_CLOSINGS)]))
            rejected = rng.choice(T.RUDE_REPLIES + spec["rude"])
        pairs.append({
            "prompt": prompt,
            "chosen": " " + chosen.format(x=filler),
            "rejected": " " + rejected.format(x=filler),
            "category": category,
        })
    return pairs


def _phrase(rng: random.Random, request: str) -> str:
    prefix, suffix = rng.choice(T.REQUEST_PREFIXES), rng.choice(T.REQUEST_SUFFIXES)
    lower_case = rng.random() < (0.5 if prefix.endswith((", ", ": ")) else 0.2)  # people type both ways
    if not lower_case:
        request = request[0].upper() + request[1:]
    if suffix and not request.endswith(("?", ".", "!")):
        request += "."
    return f"{prefix}{request}{suffix}"


def corpus() -> list[str]:
    """Every text the quickstart data contains (the ``builtin`` tokenizer's training data)."""
    texts = []
    for pair, _ in _pairs():
        texts += [pair["prompt"], pair["chosen"], pair["rejected"]]
    return texts


# Shipped tokenizers: name (as ``model.tokenizer``) -> (folder, training texts, vocabulary size).
# The alignment task's held-out wording is not in its tokenizer's texts, so held-out
# prompts meet no token that training never showed.
TOKENIZERS = {
    "builtin": (TOKENIZER_DIR, corpus, VOCAB_SIZE),
    "builtin:alignment": (ALIGNMENT_TOKENIZER_DIR, alignment.corpus, 2048),
}


def train_tokenizer(vocab_size: int = VOCAB_SIZE, texts: list[str] | None = None):
    """A byte-level BPE (GPT-2 style) trained on ``texts`` (default ``corpus()``), as a transformers tokenizer.

    Its post-processor prepends BOS, so the pipeline's BOS handling is
    exercised; pad is id 0, matching the batch layout's padding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(corpus() if texts is None else texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        chat_template=CHAT_TEMPLATE, model_max_length=2048,
    )


def write_tokenizer(directory: Path | None = None, name: str = "builtin") -> Path:
    """Trains the shipped tokenizer ``name`` and writes its ``tokenizer.json`` and a hand-written
    ``tokenizer_config.json`` (portable class name, special tokens, chat template inline) to
    ``directory`` (default: its shipped folder)."""
    shipped, texts, vocab_size = TOKENIZERS[name]
    directory = shipped if directory is None else directory
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(vocab_size, texts())
    tokenizer.backend_tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": tokenizer.model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxalign.data.builtin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-tokenizer", action="store_true", help="retrain and write the shipped tokenizers")
    parser.add_argument("--tokenizer", choices=list(TOKENIZERS), default=None,
                        help="only this tokenizer (default: all of them)")
    parser.add_argument("--out", type=Path, default=None, help="folder for --tokenizer (default: its shipped one)")
    parser.add_argument("--show", metavar="NAME", choices=NAMES, help="print a built-in dataset's train rows as JSONL")
    args = parser.parse_args(argv)
    if args.out is not None and args.tokenizer is None:
        parser.error("--out needs --tokenizer NAME")
    if args.write_tokenizer:
        for name in [args.tokenizer] if args.tokenizer else list(TOKENIZERS):
            print(f"wrote {write_tokenizer(args.out, name)}")
    if args.show:
        for row in rows(args.show):
            print(json.dumps(row))
    if not (args.write_tokenizer or args.show):
        counts = {name: {split: len(rows(name, split)) for split in SPLITS} for name in NAMES}
        print(json.dumps(counts))


if __name__ == "__main__":
    main()
