"""T5-XXL prompt-tuning memory plan, from abstract shapes only (no weights).

Lowers and compiles the trainer's real step (`trainer.make_train_step` with the
real optimizer from `optimizer.make_optimizer`, the default Adafactor) for
T5 v1.1 / LM-adapted XXL on a simulated 8-device CPU mesh, once per mesh shape
(data x model), and reads the per-device memory of each compiled executable
(`compiled.memory_analysis()`). The frozen weights are `jax.ShapeDtypeStruct`s
with the trainer's `NamedSharding`s (`partitioning.param_shardings`): nothing
is materialized, so this runs on a laptop in minutes.

  python -m bench.xxl_memory_plan                      # defaults below, ~5-15 min
  python -m bench.xxl_memory_plan --meshes 1x8,2x4 --input_length 256
  python -m bench.xxl_memory_plan --remat full --out bench/results/xxl_memory_plan_remat_full.json

Per-device peak = arguments + outputs - aliased (donated) + temporaries. The
generated-code size is host memory on CPU and is reported apart. A mesh "fits"
a device when the peak is at most 90% of its memory (the rest for the runtime,
fragmentation and the input pipeline); 90-100% is "tight". "max batch (est.)"
extrapolates temp linearly in the batch (conservatively: all of it per example)
to the largest global batch that would fit each device.

Caveats: the numbers come from XLA:CPU's buffer assignment of the SPMD-
partitioned program. TPU and GPU compilers fuse and schedule differently
(e.g. they fold bf16->f32 converts into matmuls), so treat the numbers as a
plan, within tens of percent, not as a promise; the argument sizes (weights,
batch, prompt, optimizer state) are exact. XLA:CPU computes bf16 arithmetic in
float32, so bf16 compute is not measured here.

Remat: XLA:CPU's `cse_barrier_expander` pass removes the optimization barriers
that `jax.checkpoint(prevent_cse=True)` puts around the recomputation, and CSE
then merges the recomputation back into the forward pass, so by default a
rematerialized step reports the same memory as one without remat. TPU and GPU
keep the barriers. With `--remat` other than 'none' the step is compiled with
that one pass disabled (`compiler_options={"xla_disable_hlo_passes":
"cse_barrier_expander"}`), which is how the remat numbers are measured.

Writes bench/results/xxl_memory_plan.json and prints a table; the measured
tables and what fits where are in docs/scale_out.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

NUM_DEVICES = 8
DEFAULT_MESHES = "1x8,2x4,4x2,8x1"
# Device memory per device (GiB): Cloud TPU v3 core, TPU v4 chip, NVIDIA H100.
BUDGETS_GIB = {"v3 16 GB": 16, "v4 32 GB": 32, "H100 80 GB": 80}
HEADROOM = 0.9
GIB = 2 ** 30


def _force_cpu_devices(n: int) -> None:
    """Simulated CPU devices; must run before jax is imported."""
    if "jax" in sys.modules:
        raise RuntimeError("bench.xxl_memory_plan must set XLA_FLAGS before jax is imported; "
                           "run it as its own process (python -m bench.xxl_memory_plan).")
    ours = ("--xla_force_host_platform_device_count", "--xla_cpu_experimental_ynn_fusion_type")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(ours)]
    # No YNNPACK fusions: their internal buffers are invisible to XLA's buffer
    # assignment, so with them `temp` misses most intermediates (a chain of matmuls
    # reports 0 bytes). Without them every intermediate is an XLA buffer.
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}",
                                                "--xla_cpu_experimental_ynn_fusion_type="])
    os.environ["JAX_PLATFORMS"] = "cpu"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="t5_lm_adapt_xxl",
                   help="T5 preset (t5_lm_adapt_xxl and t5_1_1_xxl share shapes)")
    p.add_argument("--meshes", default=DEFAULT_MESHES,
                   help=f"comma-separated DATAxMODEL over {NUM_DEVICES} devices")
    p.add_argument("--batch_size", type=int, default=32, help="global batch (BATCH_SIZE)")
    p.add_argument("--input_length", type=int, default=512, help="input tokens (INPUT_LENGTH)")
    p.add_argument("--target_length", type=int, default=16, help="target tokens (TARGET_LENGTH)")
    p.add_argument("--prompt_length", type=int, default=100, help="prompt length L")
    p.add_argument("--weight_dtype", default="bfloat16", help="storage dtype of frozen weights")
    p.add_argument("--compute_dtype", default=None,
                   help="override the preset's compute dtype (default: the preset's, float32, "
                        "which is what `ptransfer train` runs)")
    p.add_argument("--remat", default="none",
                   help="per-layer rematerialization: none (what the shipped XXL configs "
                        "ran before REMAT existed), full or dots (see ptransfer.backbones.layers)")
    p.add_argument("--keep_barriers", action="store_true",
                   help="compile with XLA:CPU's cse_barrier_expander disabled even for "
                        "--remat none (automatic for full / dots)")
    p.add_argument("--num_layers", type=int, default=None,
                   help="override encoder and decoder depth (quick per-layer checks)")
    p.add_argument("--optimizer", default="adafactor", help="optimizer preset")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "results", "xxl_memory_plan.json"))
    return p.parse_args(argv)


def _meshes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        d, _, m = item.strip().partition("x")
        if not (d.isdigit() and m.isdigit()) or int(d) * int(m) != NUM_DEVICES:
            raise SystemExit(f"mesh {item!r}: write DATAxMODEL with DATA*MODEL = {NUM_DEVICES}.")
        out.append((int(d), int(m)))
    return out


def abstract_inputs(backbone, optimizer, mesh, args):
    """ShapeDtypeStructs (with shardings) for the step's
    (prompt [L, D], opt_state, rng [2], params, batch)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ptransfer.backbones import t5
    from ptransfer.core import sharding as partitioning

    shapes, axes = t5.abstract_params(backbone.config)
    shardings = partitioning.param_shardings(shapes, axes, mesh)
    wdtype = jnp.dtype(args.weight_dtype)
    params = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, wdtype, sharding=sh), shapes, shardings)
    rep = partitioning.replicated(mesh)
    prompt = jax.ShapeDtypeStruct((args.prompt_length, backbone.d_model), jnp.float32,
                                  sharding=rep)
    opt_state = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
        jax.eval_shape(optimizer.init, prompt))
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep)
    bsh = partitioning.batch_sharding(mesh)
    b = args.batch_size
    batch = {k: jax.ShapeDtypeStruct((b, n), jnp.int32, sharding=bsh)
             for k, n in (("inputs", args.input_length), ("inputs_mask", args.input_length),
                          ("targets", args.target_length), ("targets_mask", args.target_length))}

    def local_bytes(x):
        shard = x.sharding.shard_shape(x.shape)
        return int(np.prod(shard, dtype=np.int64)) * x.dtype.itemsize

    weights_per_device = sum(local_bytes(x) for x in jax.tree_util.tree_leaves(params))
    n_params = sum(int(np.prod(x.shape, dtype=np.int64)) for x in jax.tree_util.tree_leaves(params))
    return (prompt, opt_state, rng, params, batch), weights_per_device, n_params


def build_backbone(args):
    """A T5Backbone with the preset's structure and no weights (params=None, no vocabulary):
    the step needs only the module; the weights come in as abstract arguments."""
    import dataclasses

    from ptransfer.backbones import t5

    config = t5.get_preset(args.preset)
    if args.compute_dtype:
        config = dataclasses.replace(config, dtype=args.compute_dtype)
    config = dataclasses.replace(config, remat=args.remat)
    if args.num_layers:
        config = dataclasses.replace(config, num_layers=args.num_layers,
                                     num_decoder_layers=args.num_layers)
    return t5.T5Backbone(name=args.preset, config=config.validate(), params=None, vocab=None)


KEEP_BARRIERS = {"xla_disable_hlo_passes": "cse_barrier_expander"}


def compiler_options(args) -> dict | None:
    """XLA options for the compile: keep remat's optimization barriers on CPU."""
    return KEEP_BARRIERS if (args.remat != "none" or args.keep_barriers) else None


def plan_one(backbone, optimizer, data: int, model: int, args) -> dict:
    """Compiles the step on a data x model mesh and returns its memory figures."""
    from ptransfer.core import sharding as partitioning
    from ptransfer.training import trainer

    mesh = partitioning.make_mesh(data, model)
    partitioning.check_batch_divisible(args.batch_size, mesh)
    inputs, weights_bytes, n_params = abstract_inputs(backbone, optimizer, mesh, args)
    step = trainer.make_train_step(backbone, optimizer, "token", mesh)
    t0 = time.perf_counter()
    lowered = step.lower(*inputs)
    t1 = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options(args))
    t2 = time.perf_counter()
    ma = compiled.memory_analysis()
    arg, out = ma.argument_size_in_bytes, ma.output_size_in_bytes
    alias, temp = ma.alias_size_in_bytes, ma.temp_size_in_bytes
    peak = arg + out - alias + temp
    flops = None
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops")) if cost and cost.get("flops") is not None else None
    except Exception:  # cost analysis is optional and backend-dependent
        pass
    row = {
        "mesh": f"{data}x{model}", "data": data, "model": model,
        "num_params": n_params,
        "weights_bytes_per_device": weights_bytes,
        "argument_bytes": arg, "output_bytes": out, "alias_bytes": alias, "temp_bytes": temp,
        "generated_code_bytes": ma.generated_code_size_in_bytes,
        "peak_bytes": peak,
        "flops_per_device": flops,
        "lower_s": round(t1 - t0, 1), "compile_s": round(t2 - t1, 1),
    }
    row["fits"] = {name: verdict(peak, gib) for name, gib in BUDGETS_GIB.items()}
    row["max_batch_estimate"] = {name: max_batch(row, gib, args.batch_size, data)
                                 for name, gib in BUDGETS_GIB.items()}
    return row


def max_batch(row: dict, budget_gib: float, batch_size: int, data: int) -> int:
    """Largest global batch (a multiple of `data`) whose peak stays within the
    headroom, extrapolating temp linearly in the batch from the measured one.
    Conservative: all of temp is counted as per-example, though part is fixed."""
    per_example = row["temp_bytes"] / batch_size
    avail = HEADROOM * budget_gib * GIB - (row["peak_bytes"] - row["temp_bytes"])
    if avail <= 0:
        return 0
    return int(avail // per_example) // data * data


def verdict(peak_bytes: int, budget_gib: float) -> str:
    if peak_bytes <= HEADROOM * budget_gib * GIB:
        return "yes"
    if peak_bytes <= budget_gib * GIB:
        return "tight"
    return "no"


def format_table(rows: list[dict]) -> str:
    head = ["mesh d×m", "weights", "arguments", "outputs", "temp", "code", "peak"] + \
        [f"fits {k}" for k in BUDGETS_GIB] + ["max batch (est.) " + " / ".join(
            k.split()[0] for k in BUDGETS_GIB)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    g = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    for r in rows:
        cells = [r["mesh"], g(r["weights_bytes_per_device"]), g(r["argument_bytes"]),
                 g(r["output_bytes"]), g(r["temp_bytes"]), g(r["generated_code_bytes"]),
                 g(r["peak_bytes"])] + [r["fits"][k] for k in BUDGETS_GIB] + \
            [" / ".join(str(r["max_batch_estimate"][k]) for k in BUDGETS_GIB)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    meshes = _meshes(args.meshes)
    _force_cpu_devices(NUM_DEVICES)
    import jax

    from ptransfer.training.optimizer import PRESETS, make_optimizer

    backbone = build_backbone(args)
    config = backbone.config
    optimizer = make_optimizer(PRESETS[args.optimizer])
    t_all = time.perf_counter()
    rows = []
    for data, model in meshes:
        row = plan_one(backbone, optimizer, data, model, args)
        rows.append(row)
        print(f"mesh {row['mesh']}: peak {row['peak_bytes'] / GIB:.2f} GiB/device "
              f"(temp {row['temp_bytes'] / GIB:.2f}); compiled in {row['compile_s']} s",
              flush=True)
    result = {
        "what": "per-device memory of the compiled T5 prompt-tuning train step "
                "(trainer.make_train_step), from abstract shapes",
        "command": "python -m bench.xxl_memory_plan " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
        "preset": args.preset, "weight_dtype": args.weight_dtype,
        "compute_dtype": config.dtype, "optimizer": args.optimizer,
        "remat": config.remat, "compiler_options": compiler_options(args),
        "num_layers": config.num_layers, "num_decoder_layers": config.num_decoder_layers,
        "batch_size": args.batch_size, "input_length": args.input_length,
        "target_length": args.target_length, "prompt_length": args.prompt_length,
        "encoder_positions": args.prompt_length + args.input_length,
        "devices": f"{NUM_DEVICES} simulated CPU devices", "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "budgets_gib": BUDGETS_GIB, "fits_rule": f"peak <= {HEADROOM:.0%} of device memory "
                                                 "(yes), <= 100% (tight), else no",
        "wall_s": round(time.perf_counter() - t_all, 1),
        "meshes": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)
    print(f"\n{args.preset}, {args.weight_dtype} weights, {config.dtype} compute"
          f", remat {config.remat}, batch "
          f"{args.batch_size}, inputs {args.input_length} (+{args.prompt_length} prompt), "
          f"targets {args.target_length}; GiB per device:\n")
    print(format_table(rows))
    print(f"\nwrote {args.out} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
