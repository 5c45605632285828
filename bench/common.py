"""What every benchmark driver records: the machine, the load, where results go."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics

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


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(xs) -> float:
    return float(statistics.median(xs))


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
