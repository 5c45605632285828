"""`ptransfer indicators`: E/C similarities and ON for a bank, correlated with a matrix.

  ptransfer indicators --bank demo_out/bank --matrix demo_out/cross_task.json --out results/
"""

from __future__ import annotations

import argparse


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "indicators", help="transferability indicators and their Spearman correlation",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bank", required=True, help="prompt bank directory")
    p.add_argument("--matrix", required=True, help="cross_task.json from `transfer matrix`")
    p.add_argument("--out", required=True, help="directory for indicators.json and PNGs")
    p.add_argument("--backbone", default=None,
                   help="backbone spec (default: the spec recorded in the bank entries)")
    p.add_argument("--stimulus", default="dummy", help="'dummy' or 'task:<name>'")
    p.add_argument("--stimulus_examples", type=int, default=8)
    p.add_argument("--positions", default="last", help="last | all | prompt")
    p.add_argument("--threshold", type=float, default=0.0)
    p.add_argument("--window_size", type=int, default=3)
    p.add_argument("--prompt", default="final", choices=("final", "best", "exported"),
                   help="which prompt of each bank entry to compare: the run's final one "
                        "(every prompt at the same step; default), its best-scoring one, or "
                        "the exported prompt.npy")
    p.add_argument("--data_dir", default=None)
    p.set_defaults(func=_run)


def _run(args) -> int:
    import json
    import os

    from ptransfer.backbones import load_backbone, resolve_backbone_spec
    from ptransfer.bank import store as bank
    from ptransfer.core.errors import DataError
    from ptransfer.core.fileio import write_json
    from ptransfer.experiments.indicators import compute_indicators
    from ptransfer.report import plots

    if not os.path.exists(args.matrix):
        raise DataError(f"{args.matrix} does not exist; run `ptransfer transfer matrix` first.")
    with open(args.matrix) as f:
        cross = json.load(f)
    spec = args.backbone
    if spec is None:
        entries = bank.list_entries(args.bank, backbone=cross["backbone"], require=True)
        spec = entries[0].meta.get("backbone_spec")
        if not spec:
            raise DataError(f"the bank entries of {cross['backbone']!r} do not record a backbone "
                            "spec; pass --backbone.")
    backbone = load_backbone(resolve_backbone_spec(spec))
    result = compute_indicators(backbone, args.bank, cross, stimulus=args.stimulus,
                                stimulus_examples=args.stimulus_examples, positions=args.positions,
                                threshold=args.threshold, window_size=args.window_size,
                                data_dir=args.data_dir, prompt_kind=args.prompt)
    os.makedirs(args.out, exist_ok=True)
    path = write_json(os.path.join(args.out, "indicators.json"), result)
    plots.indicator_scatter(result, os.path.join(args.out, "indicator_scatter.png"))
    plots.on_by_window(result, os.path.join(args.out, "on_by_window.png"))
    print(path)
    return 0
