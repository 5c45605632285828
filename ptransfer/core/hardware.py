"""What the machine computes natively: the CPU's instruction-set flags and the
compute dtype 'auto' resolves to.

bfloat16 matmuls pay only where the hardware has bf16 dot products: TPUs, GPUs,
and CPUs with `avx512_bf16` (AMD Zen 4 and 5; Intel Cooper Lake, Sapphire Rapids) or AMX
(`amx_bf16`, Intel Sapphire Rapids on). Elsewhere XLA widens every bf16 operand
to float32 and the step is slower than in float32 (bench/README.md, "Machine
kinds": 1.24x the float32 step on an AVX2-only AMD EPYC), so 'auto' keeps float32.
"""

from __future__ import annotations

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The first CPU's flags from `path` (empty when it cannot be read, e.g. not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def auto_compute_dtype(backend: str | None = None, flags: frozenset[str] | None = None) -> str | None:
    """'bfloat16' on TPU / GPU and on a CPU with native bf16 dot products, else None
    (the backbone's float32). `backend`: jax's default backend (looked up when None);
    `flags`: the CPU flags (read from /proc/cpuinfo when None)."""
    if backend is None:
        import jax

        backend = jax.default_backend()
    if backend in ("tpu", "gpu", "cuda", "rocm"):
        return "bfloat16"
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if any(f in flags for f in NATIVE_BF16_CPU_FLAGS) else None
