"""Build hook: ships the top-level `gin_configs/` inside the package.

`gin_configs/` stays at the repository's top level (where users and docs
look for it); a built wheel carries a copy as `ptransfer/gin_configs/`, which
`ptransfer.cli.gin_setup.gin_search_paths` finds with importlib.resources.
Editable installs need no copy: they read the checkout's directory.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

GIN_SUFFIXES = {".gin", ".md"}


class BuildPyWithGinConfigs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        src = Path(__file__).resolve().parent / "gin_configs"
        dst = Path(self.build_lib) / "ptransfer" / "gin_configs"
        if dst.exists():
            shutil.rmtree(dst)
        for f in sorted(src.rglob("*")):
            if f.is_file() and f.suffix in GIN_SUFFIXES:
                out = dst / f.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out)


setup(cmdclass={"build_py": BuildPyWithGinConfigs})
