"""TensorFlow's start-up noise kept off the console.

TensorFlow (seqio's input pipelines) prints, at import and at its first device
query, lines that say nothing to a ptransfer user: oneDNN's notice, "Could
not find cuda drivers", the CPU-instruction advice and, on a machine without
a GPU, "failed call to cuInit". Most are written before TensorFlow's logging
is set up, so `TF_CPP_MIN_LOG_LEVEL` does not reach them (TF 2.21); the CLI
therefore imports TensorFlow, and hides the accelerators from it (JAX owns
them), with file descriptor 2 sent to a temporary file, then replays every
line that is not such noise.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# What TensorFlow and its CUDA stubs print at start-up on any machine.
NOISE = re.compile(
    r"oneDNN custom operations|cudart_stub\.cc|Could not find cuda drivers|failed call to cuInit"
    r"|cpu_feature_guard\.cc|To enable the following instructions|rebuild TensorFlow with"
    r"|All log messages before absl::InitializeLog\(\) is called|Unable to register cu(DNN|FFT|BLAS)"
    r"|computation placer already registered|TF-TRT Warning|Could not find TensorRT")


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern = NOISE):
    """Within the block, output to fd 2 (C++ and Python alike) is held back;
    afterwards the lines that do not match `noise` are written to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not noise.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and keeps it off the accelerators, without its start-up noise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's own later INFO / WARNING lines
    with filtered_stderr():
        from ptransfer.core import distributed

        distributed.hide_accelerators_from_tensorflow()
