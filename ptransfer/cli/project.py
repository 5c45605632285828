"""`ptransfer project train|apply|recycle|tpt`: the cross-model prompt projector.

  ptransfer project train --source_backbone t5_1_1_base --target_backbone t5_1_1_xxl \\
      --tasks sst2,imdb,mnli --objective distance --bank bank/ --out proj/base_to_xxl
  ptransfer project train --source_backbone llama_tiny \\
      --target_backbone preset:t5_1_1_tiny --tasks mr --objective task --bank bank/ --out proj/x
  ptransfer project apply --projector proj/base_to_xxl --bank bank/ [--tasks sst2]
  ptransfer project recycle --source_backbone SPEC --target_backbone SPEC --bank bank/
  ptransfer project tpt --projector proj/x --source llama_tiny/mr/seed0 --bank bank/ \\
      --gin_file=models/t5_1_1_tiny.gin --gin_file=runs/prompt_tune.gin --gin.TASK=mr \\
      --gin.MODEL_DIR=/tmp/tpt --out results/tpt_model

Backbones: `--source-backbone` / `--target-backbone` take a backbone spec
(preset:NAME, hf:DIR, t5x:PRESET:DIR, gguf:FILE; `{cache}` = the asset cache)
or a bare bank id (the backbone directory name in the bank). Distance
minimizing needs only bank prompts, so bank ids suffice; task tuning runs the
target model, so its target must be a spec. The projector recipe (hidden
size, activation, steps, learning rate, ...) comes from gin
(`gin_configs/projector/*.gin`, `ptransfer.projector_recipe.*`); the flags
below override it.

Zero-shot evaluation of projected prompts on target tasks: `project apply`
writes them into the bank under the target backbone, where `ptransfer
transfer matrix --backbone <target>` evaluates them with the other prompts.
"""

from __future__ import annotations

import argparse
import json
import os

from ptransfer.core import fileio

SPEC_PREFIXES = ("preset:", "hf:", "t5x:", "gguf:")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_project_commands(subparsers) -> None:
    from ptransfer.cli.gin_setup import add_gin_arguments

    p = subparsers.add_parser("project", help="cross-model prompt projector and TPT_MODEL")
    sub = p.add_subparsers(dest="project_command", metavar="SUBCOMMAND", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = sub.add_parser("train", help="train a projector from bank prompts", formatter_class=fmt)
    add_gin_arguments(t)
    t.add_argument("--source-backbone", required=True, help="spec or bank id of the source")
    t.add_argument("--target-backbone", required=True,
                   help="spec (needed for --objective task|both) or bank id of the target")
    t.add_argument("--tasks", required=True, type=_csv, help="comma-separated task names")
    t.add_argument("--objective", choices=("distance", "task", "both"), default=None,
                   help="default: the gin recipe's (distance)")
    t.add_argument("--bank", required=True, help="prompt bank directory")
    t.add_argument("--out", required=True, help="projector directory to write")
    t.add_argument("--hidden", type=int, default=None)
    t.add_argument("--activation", choices=("tanh", "leaky_relu"), default=None)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--learning-rate", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=None, help="task-tuning batch size")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--input-length", type=int, default=128)
    t.add_argument("--target-length", type=int, default=16)
    t.add_argument("--data-dir", default=None)
    t.add_argument("--mesh-data", type=int, default=-1)
    t.add_argument("--mesh-model", type=int, default=1)
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.set_defaults(func=run_train)

    a = sub.add_parser("apply", help="project bank prompts into the target backbone's bank",
                       formatter_class=fmt)
    a.add_argument("--projector", required=True, help="a directory from `project train`")
    a.add_argument("--bank", required=True, help="bank holding the source prompts")
    a.add_argument("--tasks", type=_csv, default=None, help="tasks to project (default: all)")
    a.add_argument("--out-bank", default=None, help="bank to write into (default: --bank)")
    a.add_argument("--overwrite", action="store_true")
    a.set_defaults(func=run_apply)

    r = sub.add_parser("recycle", help="training-free baselines: linear recycling + random prompt",
                       formatter_class=fmt)
    r.add_argument("--source-backbone", required=True, help="backbone spec of the source")
    r.add_argument("--target-backbone", required=True, help="backbone spec of the target")
    r.add_argument("--bank", required=True)
    r.add_argument("--tasks", type=_csv, default=None)
    r.add_argument("--max-tokens", type=int, default=None,
                   help="fit on the first N aligned tokens (default: all)")
    r.add_argument("--out-bank", default=None)
    r.add_argument("--overwrite", action="store_true")
    r.set_defaults(func=run_recycle)

    m = sub.add_parser("tpt", help="TPT_MODEL: PT on the target from a projected prompt vs PT",
                       formatter_class=fmt)
    add_gin_arguments(m)
    m.add_argument("--projector", required=True)
    m.add_argument("--source", required=True, help="bank ref backbone/task[/run] of the source prompt")
    m.add_argument("--bank", required=True)
    m.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], default=[0])
    m.add_argument("--out", required=True, help="directory for tpt_model.json, runs and curves")
    m.set_defaults(func=run_tpt)


def _load_or_id(value: str, mesh=None):
    """A Backbone for a spec, or the bank id itself for a bare name."""
    if value.startswith(SPEC_PREFIXES) or "{cache}" in value:
        from ptransfer.backbones import load_backbone, resolve_backbone_spec

        return load_backbone(resolve_backbone_spec(value), mesh=mesh)
    from ptransfer.bank.store import check_name

    return check_name("backbone", value)


def run_train(args) -> int:
    import dataclasses

    from ptransfer.cli import gin_setup
    from ptransfer.core import sharding
    from ptransfer.experiments import cross_model
    from ptransfer.projector import model as pj
    from ptransfer.projector import training as pj_training

    gin_setup.parse_gin(args.gin_file, args.gin_binding, search_paths=args.gin_search_path)
    recipe = pj_training.projector_recipe()
    settings = recipe.settings
    changes = {k: v for k, v in (("objective", args.objective), ("steps", args.steps),
                                 ("learning_rate", args.learning_rate), ("seed", args.seed))
               if v is not None}
    settings = dataclasses.replace(settings, **changes)
    recipe = dataclasses.replace(
        recipe, settings=settings,
        **{k: v for k, v in (("hidden", args.hidden), ("activation", args.activation),
                             ("batch_size", args.batch_size)) if v is not None})
    mesh = sharding.make_mesh(args.mesh_data, args.mesh_model)
    source = _load_or_id(args.source_backbone)
    source_id = pj.backbone_id(source)
    target = _load_or_id(args.target_backbone, mesh=mesh)

    def log(row):
        print(json.dumps(row), flush=True)

    trained = cross_model.train_from_bank(args.bank, source_id, target, args.tasks, recipe, args.out,
                                 lengths={"inputs": args.input_length,
                                          "targets": args.target_length},
                                 data_dir=args.data_dir, mesh=mesh, overwrite=args.overwrite,
                                 log=log)
    print(json.dumps({"projector": os.path.abspath(args.out), **trained.spec.to_json(),
                      "objective": trained.summary.get("objective")}))
    return 0


def run_apply(args) -> int:
    from ptransfer.experiments import cross_model

    paths = cross_model.apply_to_bank(args.projector, args.bank, tasks=args.tasks,
                             out_bank=args.out_bank, overwrite=args.overwrite)
    for path in paths:
        print(path)
    return 0


def run_recycle(args) -> int:
    from ptransfer import prompts
    from ptransfer.bank import store as bank
    from ptransfer.projector import recycling

    source = _load_or_id(args.source_backbone)
    target = _load_or_id(args.target_backbone)
    if isinstance(source, str) or isinstance(target, str):
        from ptransfer.core.errors import ConfigError

        raise ConfigError("recycling reads both embedding tables: give --source-backbone and "
                          "--target-backbone as backbone specs (preset:, hf:, t5x:, gguf:).")
    w = recycling.fit_recycler(source, target, max_tokens=args.max_tokens)
    entries = bank.list_entries(args.bank, source.name, require=True)
    if args.tasks:
        entries = [e for e in entries if e.task in set(args.tasks)]
    for entry in entries:
        prompt, meta, _ = entry.read()
        recycled = recycling.recycle_prompt(prompt, w)
        for kind, out in (("recycled", recycled),
                          ("random", prompts.random_prompt_like(recycled, seed=0))):
            new_meta = {"init": kind, "steps": 0, "best_score": None, "metric": None,
                        "seed": meta.get("seed"),
                        "provenance": {"kind": kind, "source_entry": entry.ref,
                                       "source_path": os.path.abspath(entry.path),
                                       "source_backbone": source.name,
                                       "max_tokens": args.max_tokens,
                                       "note": ("linear least-squares map between the vocabulary "
                                                "embeddings" if kind == "recycled" else
                                                "random prompt with the recycled prompt's norm")}}
            print(bank.write_entry(args.out_bank or args.bank, target.name, entry.task,
                                   f"{kind}-{source.name}-{entry.run}"[:200], out, new_meta,
                                   overwrite=args.overwrite))
    return 0


def run_tpt(args) -> int:
    from ptransfer.backbones import load_backbone, resolve_backbone_spec
    from ptransfer.cli import gin_setup
    from ptransfer.cli.train import TRAIN_REQUIRED
    from ptransfer.experiments import cross_model
    from ptransfer.report import plots
    from ptransfer.training.trainer import build_train_config

    gin_setup.parse_gin(args.gin_file, args.gin_binding, required=TRAIN_REQUIRED,
                        search_paths=args.gin_search_path)
    base = build_train_config()
    backbone = load_backbone(resolve_backbone_spec(base.backbone))
    pair = cross_model.tpt_model(base, args.projector, args.bank, args.source, args.seeds, args.out,
                        backbone=backbone)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tpt_model.json")
    fileio.write_json(path, {"backbone": backbone.name, "pairs": [pair]})
    plots.tpt_curves(pair, os.path.join(args.out, f"curves_{pair['source']}_to_{base.task}.png"))
    print(json.dumps({k: pair[k] for k in ("source", "target", "mean_convergence_speedup",
                                            "mean_comparable_speedup", "pt_best", "tpt_best")}))
    return 0
