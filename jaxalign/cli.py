"""Command line: ``jaxalign train CONFIG [--set a.b=c ...]``, ``jaxalign generate --model DIR --prompts FILE``,
``jaxalign pipeline PIPELINE.yaml [--sweeps]``, ``jaxalign export RUN_DIR [--merged]``, ``jaxalign eval TARGET``,
``jaxalign dashboard RUN_DIR...``, ``jaxalign report RUN_DIR... -o report.html``, ``jaxalign data stats DATASET``,
``jaxalign constitutional CONFIG``, ``jaxalign label PAIRS --judge DIR --out FILE``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxalign", description="Align language models with human preferences in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train (or resume) a run from a YAML config")
    train.add_argument("config", help="YAML run config, e.g. configs/quickstart/rm.yaml")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set optim.lr=5e-7 (repeatable)")
    _distributed_args(train)

    plan = commands.add_parser("plan", help="estimate per-device memory of a config's train step")
    plan.add_argument("config", help="YAML run config")
    plan.add_argument("--devices", type=int, required=True, help="devices (chips/GPUs) over all hosts")
    plan.add_argument("--hbm-gib", type=float, default=None, help="memory per device in GiB, to say whether it fits")
    plan.add_argument("--model-config", default=None,
                      help="config.json to read the architecture from (default: model.path's)")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value, as for train (repeatable)")
    plan.add_argument("--import-losses", action="store_true",
                      help="import losses named as module:function (plan runs no user code without it)")

    pipeline = commands.add_parser("pipeline", help="run a pipeline of stages (SFT -> RM -> PPO | DPO), evaluated")
    pipeline.add_argument("config", help="pipeline YAML, e.g. configs/pipelines/alignment.yaml")
    pipeline.add_argument("--sweeps", action="store_true", help="also run the config's sweeps (one run per value)")
    pipeline.set_defaults(coordinator=None, num_processes=None, process_id=None)  # one process

    generate = commands.add_parser("generate", help="sample completions for a JSONL file of prompts")
    generate.add_argument("--model", required=True, help="Hugging Face model folder (with its tokenizer)")
    generate.add_argument("--prompts", required=True, help="JSONL with a 'prompt' per line (text or chat messages)")
    generate.add_argument("--out", default=None, help="output JSONL (default: stdout)")
    generate.add_argument("--max-new-tokens", type=int, default=256)
    generate.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    generate.add_argument("--top-k", type=int, default=0, help="0 = off")
    generate.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    generate.add_argument("--batch-size", type=int, default=256,
                          help="prompts per sampler call; their replies are written when it returns")
    generate.add_argument("--slots", type=int, default=16,
                          help="replies decoded at once (continuous batching; vLLM's max_num_seqs)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--max-prompt-length", type=int, default=None,
                          help="longer prompts keep their end (default: model context - max new tokens)")
    generate.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="compute dtype")
    generate.set_defaults(coordinator=None, num_processes=None, process_id=None)  # one process

    export = commands.add_parser("export", help="write a run's model from its checkpoint as Hugging Face folders")
    export.add_argument("run_dir", help="the run's run_dir (holds config.yaml and the checkpoints)")
    export.add_argument("--merged", action="store_true",
                        help="a full model folder, LoRA adapters merged into the base weights (default: as "
                             "the run's lora.export says, a PEFT adapter folder for LoRA runs)")
    export.add_argument("--out", default=None, help="new folder to write (default: RUN_DIR/export-step<N>[-merged])")
    export.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest intact one)")
    export.set_defaults(coordinator=None, num_processes=None, process_id=None)  # one process

    from jaxalign.eval.command import add_command as add_eval_command

    add_eval_command(commands)
    from jaxalign.dashboard.command import add_commands as add_dashboard_commands

    add_dashboard_commands(commands)
    from jaxalign.data.stats_report import add_commands as add_data_commands

    add_data_commands(commands)
    from jaxalign.constitutional.command import add_commands as add_constitutional_commands

    add_constitutional_commands(commands)
    return parser


def _distributed_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-host (auto-detected on TPU pods and SLURM when omitted)")
    group.add_argument("--coordinator", default=None, help="coordinator address host:port")
    group.add_argument("--num-processes", type=int, default=None)
    group.add_argument("--process-id", type=int, default=None)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plan":  # arithmetic only: no devices, no distributed start
        return _plan(args)
    if args.command in ("dashboard", "report"):  # reads files only: no devices either
        from jaxalign.dashboard.command import run as run_dashboard_command

        return run_dashboard_command(args)
    if args.command == "data":  # reads rows only
        from jaxalign.data.stats_report import run as run_data_command

        return run_data_command(args)
    # Before anything touches devices: jax.distributed must come first.
    from jaxalign import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)

    from jaxalign.config import load_config
    from jaxalign.configlib import ConfigError

    if args.command == "train":
        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as err:
            print(f"jaxalign: config error: {err}", file=sys.stderr)
            return 2
        from jaxalign.trainer import train

        # a second Ctrl-C: any checkpoint being written was finished first
        return _one_line_errors(lambda: train(cfg), "interrupted (the last checkpoint written is complete)")
    if args.command == "generate":
        return _generate(args)
    if args.command == "pipeline":
        return _pipeline(args)
    if args.command == "export":
        return _one_line_errors(lambda: _export(args), "interrupted; nothing was written (rerun to export)")
    if args.command == "eval":
        from jaxalign.eval.command import run as run_eval_command

        return run_eval_command(args)
    if args.command in ("constitutional", "label"):
        from jaxalign.constitutional.command import run as run_constitutional_command

        return run_constitutional_command(args)
    return 2


def _pipeline(args: argparse.Namespace) -> int:
    from jaxalign.pipeline import run_pipeline

    def run() -> None:
        table = run_pipeline(args.config, sweeps=args.sweeps,
                             log=lambda line: print(f"jaxalign pipeline: {line}", file=sys.stderr, flush=True))
        print(table.read_text())

    return _one_line_errors(run, "interrupted; rerun the same command to resume")


def _export(args: argparse.Namespace) -> None:
    from jaxalign.export_run import export_run

    result = export_run(args.run_dir, out=args.out, merged=args.merged, step=args.step)
    if result.note:
        print(f"jaxalign export: note: {result.note}", file=sys.stderr)
    for folder in result.folders:
        kind = "a PEFT adapter" if (folder / "adapter_config.json").exists() else "a Hugging Face model"
        print(f"jaxalign export: step {result.step}: {kind} in {folder}", file=sys.stderr)


def _one_line_errors(call, interrupted: str) -> int:
    """Runs ``call()``; bad input (config, data rows, mesh, checkpoints, NaN loss) reads better as
    one line than a traceback (JAXALIGN_DEBUG=1 shows it). Exit codes: 2 config, 1 error, 130 stopped."""
    from jaxalign.configlib import ConfigError
    from jaxalign.pipeline import PipelineStopped

    try:
        call()
    except ConfigError as err:  # also found once a run starts: the run dir, the checkpoint's architecture
        print(f"jaxalign: config error: {err}", file=sys.stderr)
        return 2
    except PipelineStopped as err:
        print(f"jaxalign: {err}", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, FileNotFoundError, FileExistsError) as err:
        if os.environ.get("JAXALIGN_DEBUG"):
            raise
        print(f"jaxalign: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jaxalign: {interrupted}", file=sys.stderr)
        return 130
    return 0


def _generate(args: argparse.Namespace) -> int:
    from jaxalign.generation.jsonl import check_counts, generate_jsonl

    options = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        batch_size=args.batch_size, slots=args.slots, seed=args.seed, max_prompt_length=args.max_prompt_length,
        dtype=args.dtype,
    )
    try:
        check_counts(args.slots, args.batch_size)  # before --out is opened (and emptied)
        if args.out is None:
            counts = generate_jsonl(args.model, args.prompts, sys.stdout, **options)
        else:
            with open(args.out, "w") as out:
                counts = generate_jsonl(args.model, args.prompts, out, **options)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("JAXALIGN_DEBUG"):
            raise
        print(f"jaxalign: error: {err}", file=sys.stderr)
        return 1
    where = args.out or "stdout"
    print(f"jaxalign: {counts['prompts']} completions ({counts['tokens']} tokens) written to {where}"
          + (f"; {counts['truncated_prompts']} prompts truncated" if counts["truncated_prompts"] else ""), file=sys.stderr)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from jaxalign.losses.registry import user_losses_not_imported

    with contextlib.nullcontext([]) if args.import_losses else user_losses_not_imported() as not_imported:
        code = _estimate_and_print(args)
    for name in not_imported:
        print(f"jaxalign: note: loss {name!r} was not imported (plan runs no user code) and is counted as a pair "
              "loss that needs a reference model; --import-losses imports it", file=sys.stderr)
    return code


def _estimate_and_print(args: argparse.Namespace) -> int:
    from jaxalign.config import load_config
    from jaxalign.configlib import ConfigError
    from jaxalign.plan import estimate, read_model_config
    from jaxalign.plan_report import format_plan, knobs

    try:
        cfg = load_config(args.config, args.overrides)
        vocab = None
        if args.model_config is None and cfg.model.path is None and "vocab_size" not in (cfg.model.config or {}):
            from jaxalign.data import load_tokenizer

            vocab = len(load_tokenizer(cfg.model.tokenizer or "builtin"))
        architecture = read_model_config(cfg.model, args.model_config, vocab_size=vocab)
        plan = estimate(cfg, args.devices, args.hbm_gib, architecture=architecture)
    except ConfigError as err:
        print(f"jaxalign: config error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:
        print(f"jaxalign: error: {err}", file=sys.stderr)
        return 1
    print(format_plan(plan, knobs(cfg, plan, architecture), args.config))
    return 0 if plan.fits is not False else 3


def entry_point() -> None:
    """The ``jaxalign`` command (and ``python -m jaxalign.cli``): restarts once with malloc
    settings that let XLA:CPU reuse its step buffers (``jaxalign.host_malloc``), then runs."""
    from jaxalign.host_malloc import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
