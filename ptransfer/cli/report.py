"""`ptransfer demo` (the whole experiment, gin-configured) and `ptransfer report`.

  ptransfer demo --gin_file=experiments/demo.gin          # the default CPU profile
  ptransfer demo --gin_file=experiments/demo_full.gin     # more seeds and steps
  ptransfer report demo_out                               # redraw REPORT.md from the JSON
"""

from __future__ import annotations

DEMO_REQUIRED = ("BACKBONE",)


def add_cli(subparsers) -> None:
    from ptransfer.cli.gin_setup import add_gin_arguments

    p = subparsers.add_parser(
        "demo", help="prompt bank, transfer matrix, TPT, indicators and REPORT.md in one run",
        description="Runs the demo experiment configured by gin (gin_configs/experiments/). "
                    "Interrupt it at any time; running it again resumes.")
    add_gin_arguments(p)
    p.set_defaults(func=_run_demo)

    p = subparsers.add_parser("report", help="redraw REPORT.md and its PNGs from results JSON")
    p.add_argument("results_dir", help="directory holding cross_task.json (and tpt.json, "
                                       "indicators.json), or a demo's output (models/<backbone>/ "
                                       "with those files, cross_model/cross_model.json)")
    p.set_defaults(func=_run_report)


def _run_demo(args) -> int:
    from ptransfer.cli import gin_setup
    from ptransfer.core.errors import ConfigError

    if not args.gin_file:
        raise ConfigError("no --gin_file given; e.g. --gin_file=experiments/demo.gin.")
    gin_setup.parse_gin(args.gin_file, args.gin_binding, required=DEMO_REQUIRED,
                        search_paths=args.gin_search_path)
    from ptransfer.experiments.demo import run_demo

    print(run_demo())
    return 0


def _run_report(args) -> int:
    import os

    from ptransfer.core.errors import DataError
    from ptransfer.report.markdown import write_report
    from ptransfer.report.multi_model import is_multi_model

    if not (os.path.exists(os.path.join(args.results_dir, "cross_task.json"))
            or is_multi_model(args.results_dir)):
        raise DataError(f"{args.results_dir} has neither cross_task.json nor models/<backbone>/"
                        "cross_task.json; run `ptransfer transfer matrix` (or `ptransfer demo`) "
                        "first.")
    print(write_report(args.results_dir))
    return 0
