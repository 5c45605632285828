"""Where a run's numbers go: metrics.jsonl (the eval curve), TensorBoard, progress lines.

`metrics.jsonl` in the model dir holds one JSON object per evaluation
(`{"step": 10, "accuracy": 80.0, "accuracy_ci": [68.2, 88.3], ...}`; a
classification task's line carries the 95% intervals `accuracy_ci` (Wilson)
and `balanced_accuracy_ci` (seeded bootstrap over the examples),
`scoring.evaluation_intervals`); on resume the lines after the
restored step are dropped, so the file always matches the checkpoint and the
bank entry gets the whole, unduplicated curve. TensorBoard events go to
`<model_dir>/tb/{train,eval}` (tensorboardX), purged past the restored step;
the run's gin config is also a text summary (`config.gin` in the Text tab).
The model dir may be remote (gs://...): files go through `ptransfer.core.fileio`
(appending to a GCS object re-uploads it, which is fine for a short curve).
"""

from __future__ import annotations

import json
import math
import sys
import time

from ptransfer.core import fileio
from ptransfer.core.errors import CheckpointError


class JsonlCurve:
    """The eval curve of one run, mirrored in `<model_dir>/metrics.jsonl`."""

    def __init__(self, path: str, *, resume_step: int):
        self.path = path
        self.records: list[dict] = []
        if fileio.exists(path):
            with fileio.open(path) as f:
                lines = [ln for ln in f.read().splitlines() if ln.strip()]
            for n, line in enumerate(lines, 1):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    if n == len(lines):  # a kill can cut the last line short
                        break
                    raise CheckpointError(f"{path}: line {n} is not JSON; the file is corrupt. "
                                          "Delete the model dir to start the run again.")
                if rec.get("step", math.inf) <= resume_step:
                    self.records.append(rec)
        self._rewrite()

    def _rewrite(self) -> None:
        fileio.atomic_write(self.path, "".join(json.dumps(rec, sort_keys=True) + "\n"
                                               for rec in self.records))

    def append(self, record: dict) -> None:
        self.records.append(record)
        with fileio.open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()


class TensorBoard:
    """Scalars into TensorBoard event files (no-op when tensorboardX is missing)."""

    def __init__(self, logdir: str, *, resume_step: int):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # optional at run time
            self._writers = {}
            return
        if fileio.is_remote(logdir):
            _register_gfile_events(logdir)
        purge = resume_step + 1 if resume_step > 0 else None
        self._writers = {k: SummaryWriter(fileio.join(logdir, k), purge_step=purge, flush_secs=30)
                         for k in ("train", "eval")}

    def scalars(self, kind: str, step: int, values: dict) -> None:
        w = self._writers.get(kind)
        if w is None:
            return
        for name, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                w.add_scalar(name, value, step)

    def text(self, kind: str, step: int, tag: str, text: str) -> None:
        """`text` under `tag` (TensorBoard's Text tab renders markdown, so it is
        indented into a code block, as T5X shows its config)."""
        w = self._writers.get(kind)
        if w is not None:
            w.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def close(self) -> None:
        for w in self._writers.values():
            w.close()


class _GfileEventsFactory:
    """tensorboardX writer factory that writes event files through `fileio` (tf.io.gfile)."""

    def open(self, path):
        return fileio.open(path, "wb")

    def directory_check(self, path):
        fileio.makedirs(path)


def _register_gfile_events(logdir: str) -> None:
    """Lets tensorboardX write to `logdir`'s scheme through tf.io.gfile.

    tensorboardX knows s3:// and, only with google-cloud-storage installed,
    gs://; other schemes (and gs:// without that package) would silently land
    in a local directory named 'gs:'. Registration is process-wide.
    """
    from tensorboardX import record_writer

    scheme = logdir.split("://", 1)[0]
    if scheme not in record_writer.REGISTERED_FACTORIES or \
            (scheme == "gs" and not record_writer.GCS_ENABLED):
        record_writer.register_writer_factory(scheme, _GfileEventsFactory())


class Progress:
    """Training progress on stderr: a tqdm bar (step/total, loss, examples/s, ETA) on a
    terminal; elsewhere (a log file, CI, a pipe) plain lines, one every
    `PLAIN_EVERY_S` seconds and one at the end, never redrawn with carriage returns."""

    PLAIN_EVERY_S = 10.0

    def __init__(self, total: int, initial: int, batch_size: int, desc: str, enabled: bool = True):
        self.batch_size = batch_size
        self.total, self.desc = total, desc
        self._last_t = time.perf_counter()
        self._last_step = initial
        self._bar = None
        self._plain = enabled and not sys.stderr.isatty()
        self._printed_t = self._t0 = self._last_t
        self._start_step = initial
        self._post: dict = {}
        if enabled and not self._plain:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step",
                             dynamic_ncols=True, file=sys.stderr, mininterval=0.5)

    def update(self, step: int, loss: float | None = None, **extra) -> None:
        if self._bar is None and not self._plain:
            return
        now = time.perf_counter()
        post = {}
        if loss is not None:
            post["loss"] = f"{loss:.4f}"
        if now > self._last_t and step > self._last_step:
            post["ex/s"] = f"{(step - self._last_step) * self.batch_size / (now - self._last_t):.1f}"
        post.update({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in extra.items()})
        self._last_t, self._last_step = now, step
        if self._bar is not None:
            self._bar.set_postfix(post, refresh=False)
            self._bar.update(step - self._bar.n)
            return
        self._post = post
        if now - self._printed_t >= self.PLAIN_EVERY_S or step >= self.total:
            self._print_line(step, now)

    def _print_line(self, step: int, now: float) -> None:
        rate = (step - self._start_step) / max(now - self._t0, 1e-9)
        eta = f" eta {(self.total - step) / rate:.0f}s" if rate > 0 and step < self.total else ""
        post = "".join(f" {k}={v}" for k, v in self._post.items())
        print(f"{self.desc}: step {step}/{self.total}{post} ({rate:.2f} step/s){eta}",
              file=sys.stderr, flush=True)
        self._printed_t = now

    def write(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        elif self._plain:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
