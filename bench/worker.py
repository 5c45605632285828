"""A benchmark side in its own process, driven by JSON lines.

The JAX side and the PyTorch side each run in a separate worker process, so
neither framework's thread pools, allocator or imports affect the other's
timings, and each process's peak RSS is its own. The driver alternates calls
between them on the same machine in the same run; only one side computes at
a time (the other blocks reading its stdin).

Protocol: the driver writes `{"op": name, "args": {...}}`; the worker calls
`handler.<op>(**args)` and answers one line `@@bench {"ok": ..., "result": ...}`
on its private copy of stdout (library output goes to stderr).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

PREFIX = "@@bench "


def thread_env(threads: int) -> dict:
    """Environment for a worker limited to `threads` cores (both frameworks get the same)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["BENCH_THREADS"] = str(threads)
    return env


def pin_threads() -> list[int]:
    """Pins this process to the first BENCH_THREADS cores; returns them. XLA's CPU
    thread pool and torch's intra-op pool both size themselves from this."""
    n = int(os.environ.get("BENCH_THREADS", "0") or 0)
    cores = sorted(os.sched_getaffinity(0))
    if n and n < len(cores):
        cores = cores[:n]
        os.sched_setaffinity(0, cores)
    return cores


def serve(handler) -> None:
    """Worker main loop (runs until op 'close' or end of input)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req["op"]
        try:
            result = None if op == "close" else getattr(handler, op)(**req.get("args", {}))
            reply = {"ok": True, "result": result}
        except Exception as e:  # reported to the driver, which stops the run
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out.write(PREFIX + json.dumps(reply) + "\n")
        if op == "close":
            break


class Worker:
    """Driver-side handle of one worker process (`python -m <module>`)."""

    def __init__(self, module: str, threads: int):
        self.module = module
        self.proc = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=thread_env(threads))

    def call(self, op: str, **args):
        self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                reply = json.loads(line[len(PREFIX):])
                if not reply["ok"]:
                    raise RuntimeError(f"{self.module}.{op} failed: {reply['error']}")
                return reply["result"]
        raise RuntimeError(f"{self.module} exited (code {self.proc.wait()}) during {op}; "
                           "see its stderr above.")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close")
            except RuntimeError:
                pass
            self.proc.wait(timeout=60)


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) since the last `reset_peak_rss`, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise OSError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Restarts the peak-RSS count at the current RSS (Linux clear_refs), so the peak
    of the measured phase excludes loading (and the weight export for the other side)."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_mb() -> float:
    """This process's current resident set size, MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
