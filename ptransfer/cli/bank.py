"""`ptransfer bank list|show|export|import`: browse and move prompt-bank entries.

`add_bank_commands(subparsers)` registers the `bank` command; the transfer
CLI module calls it. Light at import time (numpy and the bank code load in
the run functions).
"""

from __future__ import annotations

import argparse
import json
import os

from ptransfer.core.errors import ConfigError, PtransferError

DEFAULT_BANK = os.environ.get("PTRANSFER_BANK", "bank")


def add_bank_commands(subparsers) -> None:
    bank = subparsers.add_parser("bank", help="list, show, export and import prompt-bank entries")
    sub = bank.add_subparsers(dest="bank_command", metavar="BANK_COMMAND")

    def with_bank(p):
        p.add_argument("--bank", default=DEFAULT_BANK,
                       help="prompt bank directory (default: $PTRANSFER_BANK or ./bank)")
        return p

    p = with_bank(sub.add_parser("list", help="table of complete entries"))
    p.add_argument("--backbone", help="only this backbone")
    p.add_argument("--task", help="only this task")
    p.add_argument("--seeds", action="store_true",
                   help="one row per backbone/task: mean and std of the best score over runs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_list)

    p = with_bank(sub.add_parser("show", help="meta, prompt statistics and eval curve of one entry"))
    p.add_argument("entry", help="backbone/task[/run] or an entry directory")
    p.set_defaults(func=run_show)

    p = with_bank(sub.add_parser("export", help="write an entry's prompt in another format"))
    p.add_argument("entry", help="backbone/task[/run] or an entry directory")
    p.add_argument("--format", choices=("peft", "npy"), default="peft")
    p.add_argument("--out", required=True, help="output directory (peft) or .npy file")
    p.add_argument("--task-type", help="PEFT task_type (default: from the backbone family, "
                   "SEQ_2_SEQ_LM for T5, CAUSAL_LM for decoder-only)")
    p.add_argument("--base-model", help="PEFT base_model_name_or_path (HF id or path of the "
                   "backbone; default: the directory of an hf:<dir> backbone spec)")
    p.set_defaults(func=run_export)

    p = with_bank(sub.add_parser("import", help="add a PEFT adapter or .npy prompt to the bank"))
    p.add_argument("source", help="PEFT adapter directory or .npy file")
    p.add_argument("--format", choices=("peft", "npy"), default="peft")
    p.add_argument("--backbone", required=True,
                   help="bank name of the backbone the prompt belongs to (a preset name, or a "
                        "name the bank already holds; else give --backbone_spec too)")
    p.add_argument("--backbone-spec", help="load_backbone spec of that backbone (preset:, hf:, "
                   "t5x:, gguf:); its d_model is checked against the prompt's width and the "
                   "spec is recorded for `bank export`")
    p.add_argument("--task", required=True, help="a registered task name")
    p.add_argument("--run", required=True, help="run name of the new entry")
    p.add_argument("--metric", help="metric of --best_score, if known")
    p.add_argument("--best-score", type=float, help="best score, if known")
    p.add_argument("--overwrite", action="store_true", help="replace an existing entry")
    p.set_defaults(func=run_import)

    bank.set_defaults(func=lambda args: bank.print_help() or 1)


def _fmt(value, digits=4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _table(header, rows) -> str:
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run_list(args) -> int:
    from ptransfer.bank import store as bank

    entries = bank.list_entries(args.bank, args.backbone, args.task, require=True)
    if args.seeds:
        summary = bank.summarize_seeds(entries)
        if args.json:
            print(json.dumps([s.to_json() for s in summary.values()], indent=2))
            return 0
        header = ["backbone", "task", "metric", "runs", "mean", "std"]
        rows = [[s.backbone, s.task, _fmt(s.metric), str(s.n), _fmt(s.mean), _fmt(s.std)]
                for s in summary.values()]
    else:
        if args.json:
            print(json.dumps([{"path": e.path, **e.meta} for e in entries], indent=2))
            return 0
        header = ["backbone", "task", "run", "length", "d_model", "steps", "best", "metric",
                  "init", "seed"]
        rows = [[e.backbone, e.task, e.run, _fmt(e.meta.get("prompt_length")),
                 _fmt(e.meta.get("d_model")), _fmt(e.meta.get("steps")),
                 _fmt(e.meta.get("best_score")), _fmt(e.meta.get("metric")),
                 _fmt(e.meta.get("init")), _fmt(e.meta.get("seed"))] for e in entries]
    print(_table(header, rows))
    return 0


def run_show(args) -> int:
    import numpy as np

    from ptransfer.bank import store as bank

    entry = bank.resolve_ref(args.bank, args.entry)
    prompt, meta, metrics = bank.read_entry(entry.path)
    print(f"entry: {entry.path}")
    print(json.dumps(meta, indent=2, sort_keys=True))
    norms = np.linalg.norm(prompt, axis=-1)
    print(f"prompt: float32 {list(prompt.shape)}  mean {prompt.mean():.4g}  std {prompt.std():.4g}"
          f"  token norm min/mean/max {norms.min():.4g}/{norms.mean():.4g}/{norms.max():.4g}")
    print(f"metrics: {len(metrics)} rows")
    for row in metrics[-5:]:
        print("  " + json.dumps(row, sort_keys=True))
    return 0


def run_export(args) -> int:
    import numpy as np

    from ptransfer.bank import peft_format
    from ptransfer.bank import store as bank

    entry = bank.resolve_ref(args.bank, args.entry)
    prompt, meta, _ = bank.read_entry(entry.path)
    if args.format == "npy":
        np.save(args.out, prompt, allow_pickle=False)
        print(f"wrote {args.out}: float32 {list(prompt.shape)}")
        return 0
    spec = meta.get("backbone_spec") or (meta.get("provenance") or {}).get("backbone_spec") or ""
    facts = peft_format.backbone_facts(spec)
    source = {k: meta.get(k) for k in ("backbone", "task", "run", "best_score")}
    source["backbone_spec"] = spec or None
    peft_format.export_peft(
        prompt, args.out, peft_format.task_type_for(meta, args.task_type),
        base_model_name_or_path=args.base_model or facts["base_model_name_or_path"],
        num_layers=meta.get("num_layers") or facts["num_layers"],
        num_attention_heads=meta.get("num_heads") or facts["num_attention_heads"],
        source=source, quantization=facts["quantization"])
    print(f"wrote PEFT prompt-tuning adapter {args.out} from {entry.ref}")
    return 0


def run_import(args) -> int:
    import numpy as np

    from ptransfer.bank import peft_format
    from ptransfer.bank import store as bank
    from ptransfer.core.errors import CheckpointError
    from tasks.specs import get_spec

    if (args.metric is None) != (args.best_score is None):
        raise ConfigError("give --metric and --best_score together (or neither).")
    get_spec(args.task)  # an unknown task: ConfigError with close matches
    bank.check_name("backbone", args.backbone)
    source = os.path.abspath(args.source)
    provenance = {"imported_from": source, "format": args.format}
    if args.format == "peft":
        prompt, config = peft_format.import_peft(source)
        provenance["peft_config"] = config
    else:
        try:
            prompt = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {source} as a plain .npy array: {e}") from None
    widths, where = _expected_widths(args)
    shape = tuple(np.shape(prompt))
    if len(shape) == 2 and shape[1] not in widths:
        width = " or ".join(str(w) for w in sorted(widths))
        raise ConfigError(f"prompt {source} is {shape[0]} x {shape[1]}, but backbone "
                          f"{args.backbone!r} has d_model {width} ({where}); nothing "
                          "written. Give the backbone the prompt was trained for (--backbone, "
                          "--backbone_spec).")
    meta = {"init": f"import:{args.format}", "steps": None, "best_score": args.best_score,
            "metric": args.metric, "seed": None, "provenance": provenance}
    if args.backbone_spec:
        meta["backbone_spec"] = args.backbone_spec
    path = bank.write_entry(args.bank, args.backbone, args.task, args.run, prompt, meta, [],
                            overwrite=args.overwrite)
    print(f"wrote {path}: float32 {list(np.shape(prompt))}")
    return 0


def _expected_widths(args) -> tuple[set, str]:
    """({d_model} the imported prompt may have, where that comes from): from
    --backbone_spec, else the preset named --backbone, else the bank's entries of
    that backbone; one ConfigError when none of them says."""
    from ptransfer import backbones
    from ptransfer.bank import store as bank

    if args.backbone_spec:
        return {backbones.d_model_of_spec(args.backbone_spec)}, f"from {args.backbone_spec}"
    if args.backbone in backbones.all_presets():
        return {backbones.d_model_of_spec(f"preset:{args.backbone}")}, "its preset"
    try:
        entries = bank.list_entries(args.bank, args.backbone)
    except PtransferError:  # no bank yet
        entries = []
    widths = {int(e.meta["d_model"]) for e in entries if e.meta.get("d_model")}
    if widths:
        return widths, f"its entries in {args.bank}"
    raise ConfigError(f"cannot check the prompt's width: backbone {args.backbone!r} is not a "
                      f"preset and {args.bank} holds no entry of it; give its spec with "
                      "--backbone_spec (e.g. hf:/models/x or gguf:/models/x.gguf). Nothing "
                      "written.")


def main(argv=None) -> int:
    """Stand-alone entry (`python -m ptransfer.cli.bank ...`), for tests."""
    parser = argparse.ArgumentParser(prog="ptransfer")
    add_bank_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PtransferError as e:
        import sys

        print(f"ptransfer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
