"""Prints constraints.txt: name==version of every installed package in the
dependency closure of ptransfer[test] (not tools installed by hand, such as ruff).

  .venv/bin/python .ci/freeze_constraints.py > constraints.txt
"""
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(root, extras):
    seen, todo = {}, [(root, tuple(extras))]
    while todo:
        name, ex = todo.pop()
        key = canonicalize_name(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        first = key not in seen
        seen.setdefault(key, dist)
        for raw in dist.requires or ():
            req = Requirement(raw)
            envs = [{"extra": e} for e in (ex or ("",))]
            if req.marker and not any(req.marker.evaluate(e) for e in envs):
                continue
            if first or req.extras:
                todo.append((req.name, tuple(req.extras)))
    return seen


deps = closure("ptransfer", ["test"])
deps.pop("ptransfer")
# Packaging tools are the venv's, not the project's: pinning the setuptools a venv starts
# with would block extras that need a newer one (torch in the bench extra).
for tool in ("pip", "setuptools", "wheel"):
    deps.pop(tool, None)
print("# The tested pins of ptransfer[test]'s dependency closure (Python 3.11, CPU), used by")
print("# `make install` as pip's -c constraints; pyproject.toml declares the compatible ranges.")
print("# Regenerate from a working .venv: .venv/bin/python .ci/freeze_constraints.py > constraints.txt")
for key in sorted(deps):
    print(f"{deps[key].metadata['Name']}=={deps[key].version}")
