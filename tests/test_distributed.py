"""Multi-process helpers: shard info, per-host batches, cluster joining.

The 2-process test runs two real Python processes joined by jax.distributed
on loopback, each with 2 simulated CPU devices."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from ptransfer.core import distributed
from ptransfer.core.errors import ConfigError
from ptransfer.core.sharding import make_mesh

ENV_NAMES = [n for names in distributed._ENV.values() for n in names] + [distributed.AUTO_ENV]


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_shard_info_and_batch(clean_env):
    assert distributed.maybe_initialize_distributed() is False
    assert distributed.host_shard_info() == (0, 1)
    mesh = make_mesh()
    assert distributed.host_shard_info(mesh) == (0, 1)
    assert distributed.per_host_batch_size(8, mesh) == 8
    assert distributed.is_primary_host()
    n = len(jax.devices())
    local = {"inputs": np.arange(4 * n * 3).reshape(4 * n, 3), "mask": np.ones((4 * n,), bool)}
    batch = distributed.global_batch(local, mesh)
    assert batch["inputs"].shape == (4 * n, 3)
    assert batch["inputs"].sharding.spec == jax.sharding.PartitionSpec("data")
    np.testing.assert_array_equal(np.asarray(batch["inputs"]), local["inputs"])


def test_single_process_settings_do_nothing(clean_env):
    clean_env.setenv("PTRANSFER_NUM_PROCESSES", "1")
    assert distributed.maybe_initialize_distributed() is False


def test_incomplete_settings_name_what_is_missing(clean_env):
    clean_env.setenv("PTRANSFER_NUM_PROCESSES", "2")
    with pytest.raises(ConfigError, match="coordinator_address, process_id"):
        distributed.maybe_initialize_distributed()
    with pytest.raises(ConfigError, match="outside"):
        distributed.maybe_initialize_distributed("127.0.0.1:1", 2, 5)
    clean_env.setenv("PTRANSFER_PROCESS_ID", "zero")
    with pytest.raises(ConfigError, match="not an integer"):
        distributed.maybe_initialize_distributed()


def test_late_join_is_refused(clean_env):
    jax.devices()  # the backend is running in this test process
    with pytest.raises(ConfigError, match="before any JAX computation"):
        distributed.maybe_initialize_distributed("127.0.0.1:1", 2, 0)


WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from ptransfer.core import distributed
    assert distributed.maybe_initialize_distributed()      # from PTRANSFER_* env
    assert distributed.maybe_initialize_distributed()      # idempotent
    import jax
    from jax.experimental import multihost_utils
    from ptransfer.core.sharding import make_mesh
    out = {"process": jax.process_index(), "count": jax.process_count(),
           "devices": jax.device_count(), "shards": {}}
    for data, model in ((4, 1), (2, 2), (1, 4)):
        mesh = make_mesh(data, model)
        shard, num = distributed.host_shard_info(mesh)
        rows = distributed.per_host_batch_size(8, mesh)
        local = {"x": 100 * shard + np.arange(rows * 3).reshape(rows, 3)}
        full = distributed.global_batch(local, mesh)["x"]
        total = float(jax.jit(lambda a: a.sum())(full))
        gathered = multihost_utils.process_allgather(full, tiled=True)
        out["shards"][f"{data}x{model}"] = {"shard": shard, "num": num, "rows": rows,
            "shape": list(full.shape), "sum": total, "global": np.asarray(gathered).tolist()}
    print("RESULT " + json.dumps(out), flush=True)
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_loopback(tmp_path):
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   PTRANSFER_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   PTRANSFER_NUM_PROCESSES="2", PTRANSFER_PROCESS_ID=str(pid),
                   TF_CPP_MIN_LOG_LEVEL="2")
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    results = [json.loads(next(line[7:] for line in text.splitlines()
                                if line.startswith("RESULT ")))
               for text in outputs]
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["count"] == 2 and r["devices"] == 4 for r in results)
    # data=4 and data=2: each host owns half the data rows -> 2 shards of 4 rows.
    # data=1: 'model' spans both hosts, they hold the same rows -> 1 shard of 8 rows.
    expect = {"4x1": (2, 4), "2x2": (2, 4), "1x4": (1, 8)}
    for key, (num, rows) in expect.items():
        got = [r["shards"][key] for r in results]
        assert [g["num"] for g in got] == [num, num], key
        assert [g["rows"] for g in got] == [rows, rows], key
        assert sorted(g["shard"] for g in got) == ([0, 1] if num == 2 else [0, 0]), key
        want = np.concatenate([100 * s + np.arange(rows * 3).reshape(rows, 3)
                               for s in range(num)])
        for g in got:
            assert g["shape"] == [8, 3], key
            assert g["sum"] == want.sum(), key
            np.testing.assert_array_equal(np.asarray(g["global"]), want)
