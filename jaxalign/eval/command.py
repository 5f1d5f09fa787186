"""``jaxalign eval TARGET [--name NAME] [--set key=value ...] [--spec FILE.yaml]``: the command
line over ``jaxalign.eval.evaluate``. Prints the metrics as one JSON line on stdout; bad input is
one line on stderr and exit code 1."""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("eval", help="evaluate a reward model, a policy or a DPO run (docs/evaluation.md)")
    parser.add_argument("target", help="a run dir, an exported model folder, or a run config YAML")
    parser.add_argument("--name", default=None, help="result name: RUN_DIR/eval/NAME.json (default 'eval')")
    parser.add_argument("--kind", default=None, choices=["auto", "reward_model", "policy", "implicit_reward"])
    parser.add_argument("--pairs", default=None, help="held-out pairs (data spec) for reward-model/implicit eval")
    parser.add_argument("--prompts", default=None, help="prompt set (data spec) for policy eval")
    parser.add_argument("--reward", dest="rewards", action="append", default=None, metavar="SOURCE",
                        help="a reward source (folder or module:function; repeatable)")
    parser.add_argument("--gold", action="append", default=None, metavar="SOURCE",
                        help="a gold reward source, logged beside the reward (repeatable)")
    parser.add_argument("--reference", default=None, help="reference policy folder for KL and win rate ('none' = skip)")
    parser.add_argument("--judge", default=None, help="reward-model folder judging the win rate")
    parser.add_argument("--checker", dest="checkers", action="append", default=None,
                        help="a task checker, e.g. alignment (repeatable)")
    parser.add_argument("-n", "--num-generations", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--out", dest="output_dir", default=None,
                        help="folder for eval/NAME.json when the target is not in a run dir")
    parser.add_argument("--spec", default=None, help="a YAML file of eval keys (EvalSpec fields)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any EvalSpec field, e.g. --set temperature=0.7 (value parsed as YAML)")
    parser.set_defaults(coordinator=None, num_processes=None, process_id=None)  # one process


def spec_from_args(args: argparse.Namespace) -> dict:
    from jaxalign.eval.spec import EvalError

    spec: dict = {}
    if args.spec:
        try:
            with open(args.spec) as handle:
                loaded = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as err:
            raise EvalError(f"eval: --spec {args.spec}: {err}") from None
        spec.update(loaded.get("eval", loaded) if isinstance(loaded, dict) else {})
    for name in ("name", "kind", "pairs", "prompts", "reference", "judge", "checkers", "num_generations",
                 "max_new_tokens", "max_prompts", "output_dir"):
        value = getattr(args, name)
        if value is not None:
            spec[name] = value
    rewards = list(args.rewards or []) + [{_kind(g): g, "role": "gold"} for g in (args.gold or [])]
    if rewards:
        spec["rewards"] = rewards
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise EvalError(f"eval: --set {item!r}: write KEY=VALUE")
        spec[key.strip()] = yaml.safe_load(value)
    return spec


def _kind(source: str) -> str:
    return "model" if os.path.isdir(source) else "function"


def run(args: argparse.Namespace) -> int:
    from jaxalign.eval import EvalError, evaluate

    try:
        result = evaluate(args.target, spec_from_args(args))
    except (EvalError, ValueError, FileNotFoundError) as err:
        if os.environ.get("JAXALIGN_DEBUG"):
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"jaxalign: error: {message}", file=sys.stderr)
        return 1
    print(json.dumps({"name": result["name"], "kind": result["kind"], "step": result["step"],
                      **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in result["metrics"].items()}}))
    if "path" in result:
        print(f"jaxalign: wrote {result['path']}", file=sys.stderr)
    for note in result.get("notes", []):
        print(f"jaxalign: note: {note}", file=sys.stderr)
    return 0
