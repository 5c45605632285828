"""What every benchmark driver records: the machine, the load, where results go."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics

from ptransfer.core import hardware

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# CPU features that decide which matmul rates a step can reach: AVX-512, its bf16
# dot product (avx512_bf16), and Intel's AMX tiles (amx_bf16 / amx_tile).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> dict[str, bool]:
    """{flag: present} for CPU_FLAGS, from /proc/cpuinfo (all False if unreadable)."""
    flags = hardware.cpu_flags()
    return {name: name in flags for name in CPU_FLAGS}


def machine() -> dict:
    import jax

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
            "python": platform.python_version(), "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()], "load": load_average(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def describe_machine(m: dict) -> str:
    """One line: CPU model, cores, the flags present, load."""
    present = [k for k, v in m["cpu_flags"].items() if v]
    absent = [k for k, v in m["cpu_flags"].items() if not v]
    return (f"{m['cpu']} ({m['cores']} cores), flags: {' '.join(present) or '-'}; absent: "
            f"{' '.join(absent) or '-'}; devices {m['devices']}; load {m['load']}")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(xs) -> float:
    return float(statistics.median(xs))


def summary(xs) -> dict:
    """Median, min, max and spread ((max - min) / median) of a list of timings."""
    m = median(xs)
    return {"median": m, "min": float(min(xs)), "max": float(max(xs)),
            "spread": (max(xs) - min(xs)) / m if m else 0.0, "n": len(xs)}


def write_results(name: str, payload: dict, path: str | None = None) -> str:
    """Writes JSON under bench/results/ (or `path`) atomically; returns the path."""
    if path is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = os.path.join(RESULTS_DIR, f"{name}-{stamp}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    return path


def close_workers(*workers, scratch_dir: str | None = None) -> None:
    """Closes the benchmark's side workers (None entries skipped) and removes its
    scratch directory (e.g. the PEFT export), whatever happened before."""
    for worker in workers:
        if worker is not None:
            worker.close()
    if scratch_dir:
        shutil.rmtree(scratch_dir, ignore_errors=True)
