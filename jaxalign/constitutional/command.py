"""The CLI's ``constitutional`` and ``label`` commands: parse, call, print one line on bad input."""

from __future__ import annotations

import argparse
import os
import sys


def add_commands(commands: argparse._SubParsersAction) -> None:
    cai = commands.add_parser("constitutional", help="critique -> revision data from a policy and a constitution")
    cai.add_argument("config", help="YAML config (see docs/constitutional.md)")
    cai.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set rounds=2 (repeatable)")
    cai.set_defaults(coordinator=None, num_processes=None, process_id=None)

    label = commands.add_parser("label", help="AI preference labels: a judge model's P(chosen better) per pair")
    label.add_argument("pairs", help="pairs dataset (prompt/chosen/rejected JSONL, or any spec the data layer reads)")
    label.add_argument("--judge", required=True, help="judge model: Hugging Face folder with its tokenizer")
    label.add_argument("--out", required=True, help="output JSONL: the rows with the strength column added")
    label.add_argument("--principle", default=None,
                       help="principle name in the constitution (its judge_question), or a question in quotes")
    label.add_argument("--constitution", default=None, help="constitution YAML (default: the shipped one)")
    label.add_argument("--labels", default="A,B", help="the two option labels, each one token for the judge (A,B)")
    label.add_argument("--column", default="preference_strength", help="name of the column written")
    label.add_argument("--batch-size", type=int, default=16)
    label.add_argument("--max-length", type=int, default=1024, help="judge prompts longer than this keep their end")
    label.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    label.set_defaults(coordinator=None, num_processes=None, process_id=None)


def run(args: argparse.Namespace) -> int:
    from jaxalign.configlib import ConfigError

    try:
        if args.command == "constitutional":
            return _constitutional(args)
        return _label(args)
    except ConfigError as err:
        print(f"jaxalign: config error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("JAXALIGN_DEBUG"):
            raise
        print(f"jaxalign: error: {err}", file=sys.stderr)
        return 1


def _constitutional(args: argparse.Namespace) -> int:
    from jaxalign.constitutional import format_summary, load_constitutional_config, run_constitutional

    cfg = load_constitutional_config(args.config, args.overrides)
    totals = run_constitutional(cfg)
    print(format_summary(totals, cfg.out_dir), file=sys.stderr)
    return 0


def _label(args: argparse.Namespace) -> int:
    from jaxalign.constitutional.label import format_label_summary, label_file

    labels = tuple(part for part in args.labels.split(","))
    if len(labels) != 2 or not all(labels):
        raise ValueError(f"--labels: expected two labels separated by a comma, got {args.labels!r}")
    result = label_file(args.pairs, args.judge, args.out, principle=args.principle, constitution=args.constitution,
                        labels=labels, column=args.column, batch_size=args.batch_size, max_length=args.max_length,
                        dtype=args.dtype)
    print(format_label_summary(result, args.out), file=sys.stderr)
    return 0
