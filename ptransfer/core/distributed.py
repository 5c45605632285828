"""Multi-process (multi-host) setup: joining the JAX cluster, which slice of
the data each host reads, and assembling the global batch from per-host batches.

One process runs per host (TPU VM worker, GPU node, or a simulated CPU host in
tests); every process runs the same program. The mesh spans all processes'
devices; each process loads only the rows of the batch that its own devices
hold and `global_batch` stitches them into one `jax.Array`.

Call `maybe_initialize_distributed()` first thing, before any JAX computation
(even `jax.devices()`): the JAX cluster can only be joined before the backend
starts.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from ptransfer.core.errors import ConfigError
from ptransfer.core.sharding import batch_sharding

log = logging.getLogger(__name__)

# Environment variables read when an argument is not given (PTRANSFER_* first,
# then the JAX_* names that jax.distributed also understands).
_ENV = {
    "coordinator_address": ("PTRANSFER_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("PTRANSFER_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("PTRANSFER_PROCESS_ID", "JAX_PROCESS_ID"),
    "local_device_ids": ("PTRANSFER_LOCAL_DEVICE_IDS", "JAX_LOCAL_DEVICE_IDS"),
}
# Set to 1 by launch/tpu_pod.sh: join the cluster with the no-argument form
# (Cloud TPU, SLURM and Open MPI are detected by JAX itself).
AUTO_ENV = "PTRANSFER_DISTRIBUTED"


def _from_env(key: str) -> str | None:
    for name in _ENV[key]:
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
    return None


def _as_int(name: str, value) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"distributed setting {name}={value!r} is not an integer.") from None


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None,
                                 local_device_ids: Sequence[int] | None = None,
                                 *, initialization_timeout: int = 300) -> bool:
    """Joins the JAX cluster when this run is multi-process; returns whether it is.

    Multi-process when any of: explicit arguments; PTRANSFER_* / JAX_*
    environment variables (COORDINATOR_ADDRESS, NUM_PROCESSES, PROCESS_ID,
    LOCAL_DEVICE_IDS); or PTRANSFER_DISTRIBUTED=1 (the no-argument form, for
    Cloud TPU pods where JAX finds the other workers itself). With none of
    these, or NUM_PROCESSES=1, it does nothing and returns False.

    Idempotent: a second call after a successful one returns True.
    """
    if jax.distributed.is_initialized():
        return True
    address = coordinator_address or _from_env("coordinator_address")
    n = _as_int("num_processes", num_processes if num_processes is not None
                else _from_env("num_processes"))
    pid = _as_int("process_id", process_id if process_id is not None else _from_env("process_id"))
    ids = local_device_ids
    if ids is None and (env_ids := _from_env("local_device_ids")):
        ids = [_as_int("local_device_ids", x) for x in env_ids.split(",")]
    auto = os.environ.get(AUTO_ENV, "").lower() in ("1", "true", "yes", "auto")

    explicit = any(v is not None for v in (address, n, pid, ids))
    if not explicit and not auto:
        return False
    if n == 1 and not auto:
        return False
    if not auto and (address is None or n is None or pid is None):
        missing = [k for k, v in (("coordinator_address", address), ("num_processes", n),
                                  ("process_id", pid)) if v is None]
        raise ConfigError(
            f"multi-process run is missing {', '.join(missing)}: give all of coordinator "
            "address (host:port of process 0), number of processes and this process's id "
            "(arguments or PTRANSFER_COORDINATOR_ADDRESS / PTRANSFER_NUM_PROCESSES / "
            f"PTRANSFER_PROCESS_ID), or set {AUTO_ENV}=1 on Cloud TPU / SLURM / Open MPI.")
    if n is not None and pid is not None and not 0 <= pid < n:
        raise ConfigError(f"process id {pid} is outside [0, {n}); ids run from 0 to "
                          "num_processes - 1.")
    from jax._src import xla_bridge  # the public API has no "backend started?" query

    if xla_bridge.backends_are_initialized():
        raise ConfigError(
            "JAX already started its backend in this process, so it can no longer join a "
            "multi-process cluster; call maybe_initialize_distributed() before any JAX "
            "computation (including jax.devices()).")
    log.info("joining JAX cluster: coordinator=%s processes=%s id=%s", address or "auto",
             n or "auto", pid if pid is not None else "auto")
    jax.distributed.initialize(coordinator_address=address, num_processes=n,
                               process_id=pid, local_device_ids=ids,
                               initialization_timeout=initialization_timeout)
    return True


def is_primary_host() -> bool:
    """True on the one process that writes bank entries, results and logs."""
    return jax.process_index() == 0


def _data_rows_per_process(mesh: Mesh) -> dict[int, tuple[int, ...]]:
    """process index -> sorted indices along the mesh's 'data' axis its devices hold."""
    devices = np.moveaxis(mesh.devices, mesh.axis_names.index("data"), 0)
    rows: dict[int, set[int]] = {}
    for row, devs in enumerate(devices.reshape(devices.shape[0], -1)):
        for d in devs:
            rows.setdefault(d.process_index, set()).add(row)
    return {p: tuple(sorted(r)) for p, r in rows.items()}


def host_shard_info(mesh: Mesh | None = None) -> tuple[int, int]:
    """(shard_index, num_shards) of the data this process reads (seqio.ShardInfo).

    Without a mesh: (jax.process_index(), jax.process_count()), i.e. every host
    reads a distinct 1/num_hosts of the data. With a mesh: hosts whose devices
    hold the same rows of the 'data' axis read the same shard (e.g. when
    'model' spans hosts), so num_shards is the number of distinct row groups.
    """
    if mesh is None:
        return jax.process_index(), jax.process_count()
    groups = _data_rows_per_process(mesh)
    distinct = sorted(set(groups.values()))
    flat = [r for g in distinct for r in g]
    if len(flat) != len(set(flat)):
        raise ConfigError(
            f"mesh {dict(mesh.shape)}: hosts hold overlapping but unequal parts of the 'data' "
            "axis, so the batch cannot be split per host; make 'data' a multiple (or divisor) "
            "of the number of hosts with 'model' inside a host.")
    mine = groups.get(jax.process_index())
    if mine is None:
        raise ConfigError("this process has no devices in the mesh; build the mesh over "
                          "jax.devices() (all processes' devices).")
    return distinct.index(mine), len(distinct)


def per_host_batch_size(global_batch_size: int, mesh: Mesh | None = None) -> int:
    """Rows each host loads per step: global batch / number of data shards."""
    _, shards = host_shard_info(mesh)
    if global_batch_size % shards:
        raise ConfigError(
            f"batch size {global_batch_size} does not split evenly over {shards} hosts; "
            f"use a multiple of {shards}.")
    return global_batch_size // shards


def global_batch(local_batch: Any, mesh: Mesh, sharding: NamedSharding | None = None) -> Any:
    """Per-host batch -> global batch sharded over the mesh's 'data' axis.

    Args:
      local_batch: pytree of numpy arrays `[B_local, ...]`, this host's rows
        (from its `host_shard_info(mesh)` shard of the data).
      mesh: the mesh over all processes' devices.
      sharding: defaults to `batch_sharding(mesh)` (leading dim over 'data').

    Returns:
      pytree of `jax.Array` `[B_local * num_shards, ...]`, rows ordered by shard index.
    """
    sharding = batch_sharding(mesh) if sharding is None else sharding
    _, shards = host_shard_info(mesh)

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(
            sharding, x, (x.shape[0] * shards,) + x.shape[1:])

    return jax.tree_util.tree_map(one, local_batch)


def hide_accelerators_from_tensorflow() -> None:
    """Keeps TensorFlow (used by seqio/tfds for input pipelines) off the GPUs/TPUs
    so it does not reserve their memory; JAX owns the accelerators."""
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):  # already initialized, or no such device type
            pass
