"""The device mesh and the one table of logical-axis rules.

Every parameter and activation is annotated with logical axis names; these
rules map them onto a `(data, model)` mesh: batches are split over 'data',
the frozen weights over 'model' (Megatron-style: MLP and head dimensions),
and the prompt is replicated. The same code runs from one CPU device to a
pod slice: only the mesh shape changes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ptransfer.core.errors import ConfigError

MESH_AXES = ("data", "model")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("embed", None),
    ("length", None),
    ("relpos_buckets", None),
    ("prompt_length", None),
    ("positions", None),
)


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, model) mesh over `devices` (default: all). -1 fills the rest."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and model == -1:
        raise ConfigError("mesh: at most one of data/model may be -1.")
    if data == -1:
        data = n // model if model > 0 and n % model == 0 else 0
    if model == -1:
        model = n // data if data > 0 and n % data == 0 else 0
    if data <= 0 or model <= 0 or data * model != n:
        raise ConfigError(
            f"mesh (data={data}, model={model}) does not cover the {n} available devices; "
            f"choose data * model = {n}.")
    return Mesh(np.asarray(devices).reshape(data, model), MESH_AXES)


def logical_to_spec(axes: Sequence[str | None] | None,
                    rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
    """('embed', 'mlp') -> PartitionSpec(None, 'model'); a mesh axis is used once."""
    if axes is None:
        return PartitionSpec()
    table = dict(rules)
    used, out = set(), []
    for name in axes:
        mesh_axis = table.get(name) if name is not None else None
        if mesh_axis in used:
            mesh_axis = None
        if mesh_axis is not None:
            used.add(mesh_axis)
        out.append(mesh_axis)
    return PartitionSpec(*out)


def divisible_spec(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
    """Drops a mesh axis from dimensions it does not divide (tiny test models)."""
    fixed = []
    for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        fixed.append(axis if axis is None or dim % mesh.shape[axis] == 0 else None)
    return PartitionSpec(*fixed)


def is_axes_leaf(x) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def param_shardings(params, logical_axes, mesh: Mesh):
    """Tree of NamedShardings for `params` from their logical axis names."""
    def one(axes, arr):
        spec = divisible_spec(logical_to_spec(axes), np.shape(arr), mesh)
        return NamedSharding(mesh, spec)
    return jax.tree_util.tree_map(one, logical_axes, params, is_leaf=is_axes_leaf)


def shard_params(params, logical_axes, mesh: Mesh):
    """Places the frozen params on the mesh by the logical rules."""
    return jax.device_put(params, param_shardings(params, logical_axes, mesh))


def mesh_of(tree) -> Mesh | None:
    """The mesh `tree`'s arrays are placed on (its first leaf's NamedSharding), else None."""
    leaves = jax.tree_util.tree_leaves(tree)
    placed = getattr(leaves[0], "sharding", None) if leaves else None
    return placed.mesh if isinstance(placed, NamedSharding) else None


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over 'data', the rest replicated."""
    return NamedSharding(mesh, PartitionSpec("data"))


def place_host_array(x, sharding: NamedSharding | None) -> jax.Array:
    """A host array that every process holds in full -> a jax.Array laid out by
    `sharding` (each device takes its slice); None: a plain default-device array."""
    x = np.asarray(x)
    if sharding is None:
        return jnp.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def place_leading(x, mesh: Mesh) -> jax.Array:
    """A host array [N, ...] over the mesh: its leading dimension split over 'data'
    when N divides evenly, else replicated."""
    x = np.asarray(x)
    divisible = x.ndim >= 1 and x.shape[0] % mesh.shape["data"] == 0
    return place_host_array(x, batch_sharding(mesh) if divisible else replicated(mesh))


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    if batch_size % mesh.shape["data"]:
        raise ConfigError(
            f"batch size {batch_size} is not divisible by the mesh's data axis "
            f"({mesh.shape['data']}); pick a multiple of it.")


def num_params(tree) -> int:
    return sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree))
