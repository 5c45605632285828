"""Assembling a frozen parameter tree from checkpoint tensors, one at a time.

Readers map checkpoint names onto ptransfer paths ("encoder/layers_0/mlp/wi/kernel")
and hand each array to `ParamTreeBuilder.put`, which checks its shape against
the family's abstract tree, casts it to the storage dtype and places it on the
device (sharded by the logical rules when a mesh is given) before the next one
is read: peak host memory stays near one copy of the weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ptransfer.core.errors import CheckpointError
from ptransfer.core.sharding import divisible_spec, logical_to_spec


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {"a/b/c": leaf}."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def unflatten(flat: dict[str, object]) -> dict:
    """{"a/b/c": leaf} -> nested dict."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


class ParamTreeBuilder:
    """Fills a parameter tree whose shapes and logical axes are known in advance.

    Args:
      abstract: nested dict of `jax.ShapeDtypeStruct` (from `jax.eval_shape` of init).
      axes: matching nested dict of logical-axis tuples.
      dtype: storage dtype (None: float32).
      mesh: optional mesh; arrays are placed sharded by the logical rules.
      source: a name for error messages (the checkpoint path).
    """

    def __init__(self, abstract, axes, *, dtype=None, mesh=None, source: str = "checkpoint"):
        self._shapes = {k: tuple(v.shape) for k, v in flatten(abstract).items()}
        self._axes = flatten(axes) if axes is not None else {}
        self._dtype = jnp.float32 if dtype is None else dtype
        self._mesh = mesh
        self._source = source
        self._values: dict[str, jax.Array] = {}

    def put(self, path: str, array: np.ndarray) -> None:
        if path not in self._shapes:
            raise CheckpointError(f"{self._source}: parameter {path!r} has no place in the model "
                                  "tree; does the checkpoint match the chosen preset/config?")
        want = self._shapes[path]
        if tuple(array.shape) != want:
            raise CheckpointError(
                f"{self._source}: {path} has shape {tuple(array.shape)} but the model expects {want}. "
                "The checkpoint does not match the preset/config; pick the preset of the model "
                "that wrote it.")
        array = np.asarray(array, dtype=self._dtype)  # no copy when the dtype already matches
        if self._mesh is not None:
            from jax.sharding import NamedSharding
            spec = divisible_spec(logical_to_spec(self._axes.get(path)), want, self._mesh)
            self._values[path] = jax.device_put(array, NamedSharding(self._mesh, spec))
        else:
            self._values[path] = jax.device_put(array)

    def build(self) -> dict:
        missing = sorted(set(self._shapes) - set(self._values))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise CheckpointError(f"{self._source}: {len(missing)} parameter(s) missing: {shown}. "
                                  "The checkpoint is incomplete or of another architecture.")
        return unflatten(self._values)
