"""The machine's float32 matmul rate as each framework reaches it (the ceiling of a step).

    python -m bench.gemm --side jax      # XLA CPU
    python -m bench.gemm --side torch    # PyTorch CPU (the `bench` extra)

Shapes are the matmuls that dominate the benchmarked steps ([tokens, in] @ [in, out]):
T5-small FFN in and out, SmolLM2 FFN, SmolLM2 vocabulary head. Each side is
pinned to `--threads` cores, as in the step benchmark.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

SHAPES = [(1824, 512, 2048), (1824, 2048, 512), (672, 576, 1536), (672, 576, 49152)]


def _median_seconds(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", choices=["jax", "torch"], required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))[:args.threads]
    os.sched_setaffinity(0, cores)
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), np.float32)
        b = rng.standard_normal((k, n), np.float32)
        if args.side == "torch":
            import torch

            torch.set_num_threads(len(cores))
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            seconds = _median_seconds(lambda: ta @ tb, args.reps)
        else:
            import jax
            import jax.numpy as jnp

            ja, jb = jnp.asarray(a), jnp.asarray(b)
            f = jax.jit(jnp.matmul)
            seconds = _median_seconds(lambda: f(ja, jb).block_until_ready(), args.reps)
        print(f"{args.side} [{m}x{k}] @ [{k}x{n}]: {2 * m * k * n / seconds / 1e9:.1f} GFLOP/s "
              f"({len(cores)} cores, load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
