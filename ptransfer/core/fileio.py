"""File I/O for local paths and for any `tf.io.gfile` filesystem (gs://, ram://, ...).

A path with a scheme (`xxx://...`) is *remote* and goes through
`tensorflow.io.gfile`, imported only when such a path is first used; every
other path is local and uses `os` / `open` directly (fast, no TF import), so
local behaviour is exactly that of the standard library.

Remote errors are re-raised as the matching OSError (FileNotFoundError,
FileExistsError, PermissionError, else OSError), so callers need one
`except OSError` for both kinds of path. Directory names from a remote
`listdir` lose the trailing '/' that GCS adds.

Atomicity (`atomic_write`): locally, a temp file beside the target is renamed
over it (atomic on POSIX). Remotely, a temp object is written and renamed
with `gfile.rename(overwrite=True)`; an object store has no atomic rename
(GCS copies then deletes), so a reader never sees a half-written *object*
but a crash can leave a stray `*.tmp*` object, and a group of files is never
updated atomically. Code that needs a consistent group of files (the prompt
bank) must write a marker last (the bank's COMPLETE, with checksums).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import posixpath
import re
import shutil
import tempfile
import uuid

import numpy as np

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path) -> bool:
    """True for a path with a scheme (`gs://b/x`, `ram://x`), handled by tf.io.gfile."""
    return isinstance(path, str) and _SCHEME.match(path) is not None


def _gfile():
    import tensorflow as tf  # lazy: local paths never import TensorFlow

    return tf.io.gfile


@contextlib.contextmanager
def _os_errors(path):
    """Re-raises a tf.errors.OpError as the matching OSError."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.NotFoundError as e:
        raise FileNotFoundError(2, e.message, path) from None
    except tf.errors.AlreadyExistsError as e:
        raise FileExistsError(17, e.message, path) from None
    except tf.errors.PermissionDeniedError as e:
        raise PermissionError(13, e.message, path) from None
    except tf.errors.OpError as e:
        raise OSError(f"{path}: {type(e).__name__}: {e.message}") from None


def join(path: str, *parts: str) -> str:
    """Joins path components ('/' for remote paths)."""
    return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def abspath(path: str) -> str:
    """os.path.abspath for a local path; a remote path is returned unchanged."""
    return path if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    with _os_errors(path):
        return _gfile().exists(path)


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(path)
    with _os_errors(path):
        return _gfile().isdir(path)


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(path)
    with _os_errors(path):
        return _gfile().exists(path) and not _gfile().isdir(path)


def makedirs(path: str, exist_ok: bool = True) -> None:
    """Creates `path` and its parents (remote: always exist_ok, as on GCS)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=exist_ok)
        return
    with _os_errors(path):
        _gfile().makedirs(path)


def listdir(path: str) -> list[str]:
    """Names in a directory (unsorted), without a trailing '/'."""
    if not is_remote(path):
        return os.listdir(path)
    with _os_errors(path):
        return [n.rstrip("/") for n in _gfile().listdir(path)]


def glob(pattern: str) -> list[str]:
    """Paths matching a glob pattern, sorted."""
    if not is_remote(pattern):
        import glob as _glob

        return sorted(_glob.glob(pattern))
    with _os_errors(pattern):
        return sorted(_gfile().glob(pattern))


class _RemoteFile:
    """A tf.io.gfile.GFile whose errors are OSErrors (see `open`)."""

    def __init__(self, path: str, mode: str):
        self.name = path
        with _os_errors(path):
            if "w" in mode and _gfile().exists(path):
                # ram:// appends instead of truncating (TF 2.21); make 'w' mean 'w' everywhere
                _gfile().remove(path)
            self._f = _gfile().GFile(path, mode)
            if "w" in mode or "a" in mode:  # GFile creates the file on first write only
                self._f.write(b"" if "b" in mode else "")

    def __getattr__(self, attr):
        value = getattr(self._f, attr)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            with _os_errors(self.name):
                return value(*args, **kwargs)

        return call

    def __iter__(self):
        with _os_errors(self.name):
            yield from self._f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with _os_errors(self.name):
            self._f.close()


def open(path: str, mode: str = "r"):  # noqa: A001 - deliberately mirrors builtins.open
    """builtins.open for a local path; a GFile for a remote one.

    Remote modes: r, rb, w, wb, a, ab (no 'x': object stores cannot create
    exclusively). Appending to a GCS object re-uploads the whole object.
    """
    if not is_remote(path):
        return builtins.open(path, mode)
    if "x" in mode or "+" in mode:
        raise ValueError(f"mode {mode!r} is not supported for remote path {path!r}")
    return _RemoteFile(path, mode)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def remove(path: str) -> None:
    """Deletes one file."""
    if not is_remote(path):
        os.remove(path)
        return
    with _os_errors(path):
        _gfile().remove(path)


def rmtree(path: str, ignore_errors: bool = False) -> None:
    """Deletes a directory and everything under it."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    try:
        with _os_errors(path):
            _gfile().rmtree(path)
    except OSError:
        if not ignore_errors:
            raise


def replace(src: str, dst: str) -> None:
    """Renames `src` to `dst`, replacing `dst` (os.replace; remote: copy+delete on GCS)."""
    if not is_remote(src) and not is_remote(dst):
        os.replace(src, dst)
        return
    with _os_errors(src):
        _gfile().rename(src, dst, overwrite=True)


def rename(src: str, dst: str) -> None:
    """Renames `src` to `dst`; remotely an existing `dst` is a FileExistsError."""
    if not is_remote(src) and not is_remote(dst):
        os.rename(src, dst)
        return
    with _os_errors(src):
        _gfile().rename(src, dst, overwrite=False)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """A file object on a temp path beside `path`, renamed over `path` when the
    block ends without an error (the temp file is removed otherwise).

    The one atomic writer of ptransfer: readers see the old content or the new,
    never a partial file (a local file is fsynced before the rename); on a
    remote path see the module docstring for what "atomic" means there.
    """
    tmp = f"{path}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, mode) as f:
            yield f
            if not is_remote(path):
                f.flush()
                os.fsync(f.fileno())
        replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if exists(tmp):
                remove(tmp)
        raise


def make_temp_dir(parent: str, prefix: str) -> str:
    """A new local directory in `parent` with the mode a plain `mkdir` gives (the
    umask's), not mkdtemp's 0700: it is renamed into place as a normal directory."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


@contextlib.contextmanager
def atomic_directory(directory: str):
    """A fresh local temp directory beside `directory`; when the block ends without an
    error it replaces `directory` (an existing one is moved aside, then removed), else
    it is removed. Readers see the old directory or the complete new one."""
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = make_temp_dir(parent, f".{os.path.basename(directory)}.tmp-")
    try:
        yield tmp
        if os.path.exists(directory):
            old = f"{directory}.old-{os.getpid()}"
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: str, data: bytes | str) -> str:
    """Writes `data` to `path` through `atomic_open`; returns `path`."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    return path


def write_json(path: str, data, *, sort_keys: bool = False) -> str:
    """`data` as indented JSON, written atomically (`atomic_write`); returns `path`."""
    return atomic_write(path, json.dumps(data, indent=1, sort_keys=sort_keys))


def write_npy(path: str, array) -> str:
    """`array` as a `.npy` file (no pickles), written atomically; returns `path`."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write(path, buf.getvalue())
