"""`ptransfer train` and `ptransfer eval` (gin-configured), plus the bank commands.

  ptransfer train --gin_file=models/t5_tiny.gin --gin_file=runs/prompt_tune.gin \\
      --gin_file=prompts/vocab.gin --gin.TASK=mr --gin.MODEL_DIR=/tmp/run --gin.TRAIN_STEPS=200
  ptransfer eval --gin_file=models/smollm2_135m.gin --gin_file=runs/prompt_eval.gin \\
      --gin.TASK=mr --gin.PROMPT=/tmp/run/bank/smollm2_135m/mr/run

Gin files are found through the gin search path (see `ptransfer.cli.gin_setup`).
Heavy imports (jax, seqio) happen inside the run functions.
"""

from __future__ import annotations

import json
import sys

TRAIN_REQUIRED = ("BACKBONE", "TASK", "MODEL_DIR", "PROMPT_LENGTH", "BATCH_SIZE", "TRAIN_STEPS",
                  "INIT_FROM")
EVAL_REQUIRED = ("BACKBONE", "TASK", "PROMPT")


def add_cli(subparsers) -> None:
    from ptransfer.cli.gin_setup import add_gin_arguments, required_macros_help

    p = subparsers.add_parser(
        "train", help="prompt-tune a frozen backbone (gin-configured)",
        description="Prompt tuning: only the prompt is trained. Resumes from MODEL_DIR's "
                    "latest checkpoint; writes a prompt bank entry at the end. "
                    + required_macros_help(TRAIN_REQUIRED, "runs/prompt_tune.gin"))
    add_gin_arguments(p)
    p.add_argument("--print_config", action="store_true",
                   help="print the resolved gin config and exit (nothing is loaded)")
    p.set_defaults(func=_run_train)

    p = subparsers.add_parser(
        "eval", help="evaluate a prompt (or none) on a task split",
        description="Scores a prompt on a task split with the task's metrics (rank "
                    "classification or greedy decoding). "
                    + required_macros_help(EVAL_REQUIRED, "runs/prompt_eval.gin")
                    + " PROMPT=None evaluates without a prompt.")
    add_gin_arguments(p)
    p.set_defaults(func=_run_eval)

    from ptransfer.cli import bank as bank_cli

    bank_cli.add_bank_commands(subparsers)


def _parse(args, required) -> None:
    from ptransfer.cli import gin_setup

    if not args.gin_file:
        from ptransfer.core.errors import ConfigError

        raise ConfigError("no --gin_file given; e.g. --gin_file=models/t5_tiny.gin "
                          "--gin_file=runs/prompt_tune.gin --gin_file=prompts/random.gin.")
    gin_setup.parse_gin(args.gin_file, args.gin_binding, required=required,
                        search_paths=args.gin_search_path)


def _run_train(args) -> int:
    from ptransfer.cli import gin_setup

    _parse(args, TRAIN_REQUIRED)
    if args.print_config:
        print(gin_setup.config_text())
        return 0
    from ptransfer.core import distributed
    from ptransfer.training import trainer

    distributed.maybe_initialize_distributed()
    distributed.hide_accelerators_from_tensorflow()
    config = trainer.build_train_config()
    # config.gin once every check passed (a failed start leaves no MODEL_DIR), then
    # again at the end, complete with what the run itself configured
    result = trainer.Trainer(config, on_start=gin_setup.write_operative_config).run()
    if distributed.is_primary_host():  # complete: everything the run called
        gin_setup.write_operative_config(config.model_dir)
    summary = {"model_dir": config.model_dir, "steps": result.steps, "metric": result.metric,
               "best_score": result.best_score, "best_step": result.best_step,
               "bank_entry": result.bank_entry, "wall_time_s": round(result.wall_time_s, 2)}
    print(json.dumps(summary, sort_keys=True), file=sys.stdout)
    return 0


def _run_eval(args) -> int:
    _parse(args, EVAL_REQUIRED)
    from ptransfer.core import distributed
    from ptransfer.training import evaluation

    distributed.maybe_initialize_distributed()
    distributed.hide_accelerators_from_tensorflow()
    result = evaluation.run_eval(evaluation.build_eval_config())
    print(json.dumps(result, sort_keys=True))
    return 0
