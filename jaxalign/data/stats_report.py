"""``jaxalign data stats``: the statistics of ``data.stats`` written as
``stats.json`` and ``stats.md`` (markdown tables), and the command itself."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def write_stats(stats: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Writes ``stats.json`` and ``stats.md`` into ``out_dir``; returns their paths.
    Each file is written whole to a temporary name first, so a killed run leaves no half file."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "stats.json", folder / "stats.md"
    for path, text in zip(paths, (json.dumps(stats, indent=2) + "\n", markdown(stats))):
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(text)
        partial.replace(path)
    return paths


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def markdown(stats: dict[str, Any]) -> str:
    """The statistics as a short markdown report: flags first, then the tables."""
    counts = stats["counts"]
    lines = [f"# Data statistics: {stats['dataset']} ({stats['split']}, format {stats['format']})", ""]
    flagged = stats.get("annotators", {}).get("flagged", [])
    for warning in stats["warnings"]:
        lines.append(f"- **warning:** {warning}")
    for flag in flagged:
        lines.append(f"- **annotator {flag['annotator']}:** {flag['why']}")
    if flagged or stats["warnings"]:
        lines.append("")
    lines += ["## Counts", ""] + _table(["rows read", "kept", "skipped", "pairs", "rated replies", "prompts", "annotators"], [[
        counts["rows_read"], counts["rows_kept"], counts["rows_skipped"], counts["pairs"], counts["rated_replies"],
        counts["prompts"], counts["annotators"]]])
    if counts["skipped"]:
        lines += ["", "Skipped rows by reason: " + ", ".join(f"{k} {v}" for k, v in counts["skipped"].items())]
    lengths = stats["lengths"]
    lines += ["", f"## Lengths ({lengths['unit']})", ""] + _table(["text", "count", "mean", "p50", "p90", "max"], [
        [name, s["count"], _num(s.get("mean"), 0), _num(s.get("p50"), 0), _num(s.get("p90"), 0), _num(s.get("max"), 0)]
        for name, s in lengths.items() if isinstance(s, dict)])
    bias, position = stats["length_bias"], stats["position_bias"]
    lines += ["", "## Biases", "",
              f"- Length: the chosen reply is the longer in {_pct(bias['chosen_longer'])} of {bias['pairs']} pairs.",
              f"- Position ({position['source']}): the chosen reply was shown first in "
              f"{_pct(position['chosen_first'])} of {position['pairs']} pairs."]
    duplicates, contradictions = stats["duplicates"], stats["contradictions"]
    lines += ["", "## Duplicates and contradictions", "",
              f"- Exact duplicates: {duplicates['exact']}; near duplicates: {duplicates['near']} ({duplicates['definition']}).",
              f"- Contradictory items (the same two replies labelled both ways): {contradictions['items']} of "
              f"{contradictions['of_items']} ({_pct(contradictions['share'])})."]
    if "ratings" in stats:
        ratings = stats["ratings"]
        values = sorted({v for d in ratings["by_annotator"].values() for v in d["histogram"]}, key=float)
        lines += ["", "## Ratings", ""] + _table(["annotator", "count", "mean", "std", *values], [
            [name, d["count"], _num(d["mean"]), _num(d["std"]), *(d["histogram"].get(v, 0) for v in values)]
            for name, d in ratings["by_annotator"].items()])
    if "annotators" in stats:
        lines += _annotator_lines(stats)
    return "\n".join(lines) + "\n"


def _annotator_lines(stats: dict[str, Any]) -> list[str]:
    section = stats["annotators"]
    length = stats["length_bias"]["by_annotator"]
    position = stats["position_bias"].get("by_annotator", {})
    calibration = section.get("calibration", {})
    header = ["annotator", "labels", "agreement with majority", "kappa", "reliability weight", "chose longer",
              "chose first"] + (["offset", "spread"] if calibration else [])
    rows = []
    for name, row in section["agreement"].items():
        cells = [name, row["labels"], f"{_pct(row['agreement'])} of {row['compared']}", _num(row["kappa"]),
                 _num(row["reliability"]), _pct(length.get(name, {}).get("chosen_longer")),
                 _pct(position.get(name, {}).get("chosen_first"))]
        if calibration:
            cells += [_num(calibration.get(name, {}).get("offset")), _num(calibration.get(name, {}).get("spread"))]
        rows.append(cells)
    alpha = section["krippendorff_alpha"]
    lines = ["", f"## Annotators (column '{section['column']}', {section['votes']})", "",
             f"Krippendorff's alpha ({section['alpha_level']}): {_num(alpha, 3)}", ""] + _table(header, rows)
    pairwise = section["kappa_pairwise"]
    if pairwise:
        lines += ["", "Pairwise Cohen's kappa" + (" (quadratic weights)" if section["votes"] == "ratings" else "") + ":",
                  ""] + _table(["annotators", "kappa", "shared items"],
                               [[pair.replace("|", " & "), _num(v["kappa"]), v["items"]] for pair, v in pairwise.items()])
    return lines


def add_commands(commands: argparse._SubParsersAction) -> None:
    """``jaxalign data stats DATASET``."""
    data = commands.add_parser("data", help="inspect a dataset")
    actions = data.add_subparsers(dest="data_command", required=True)
    stats = actions.add_parser("stats", help="counts, lengths, biases, duplicates and annotator agreement of a dataset")
    stats.add_argument("dataset", help="a dataset spec as data.train takes it: a file, builtin:NAME or a hub name")
    stats.add_argument("--out", default="data-stats", help="folder for stats.json and stats.md (default: data-stats)")
    stats.add_argument("--split", default="train", help="split to read (default: train)")
    stats.add_argument("--format", default="auto", help="row format (default: detected from the columns)")
    stats.add_argument("--annotator-column", default="annotator", help="column naming the annotator")
    stats.add_argument("--position-column", default="chosen_first",
                       help="boolean column: the chosen reply was shown first (position bias)")
    stats.add_argument("--rating-scale", type=float, nargs=2, metavar=("LOWEST", "HIGHEST"), default=None,
                       help="declared rating scale; ratings outside it are counted as bad rows")
    stats.add_argument("--tokenizer", default=None, help="tokenizer with a chat template, for conversational rows")


def run(args: argparse.Namespace) -> int:
    from jaxalign.data.stats import dataset_stats

    try:
        tokenizer = None
        if args.tokenizer:
            from jaxalign.data import load_tokenizer

            tokenizer = load_tokenizer(args.tokenizer)
        stats = dataset_stats(args.dataset, split=args.split, fmt=args.format, annotator_column=args.annotator_column,
                              rating_scale=args.rating_scale, position_column=args.position_column, tokenizer=tokenizer)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("JAXALIGN_DEBUG"):
            raise
        print(f"jaxalign: error: {err}", file=sys.stderr)
        return 1
    json_path, md_path = write_stats(stats, args.out)
    for warning in stats["warnings"]:
        print(f"jaxalign: warning: {warning}", file=sys.stderr)
    for flag in stats.get("annotators", {}).get("flagged", []):
        print(f"jaxalign: annotator {flag['annotator']}: {flag['why']}", file=sys.stderr)
    print(f"jaxalign: wrote {json_path} and {md_path}", file=sys.stderr)
    return 0
