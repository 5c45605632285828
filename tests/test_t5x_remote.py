"""T5X checkpoints on a remote filesystem: read through fileio and tensorstore.

TensorFlow's real in-memory `ram://` filesystem stands in for GCS (as the
bank tests use it): the msgpack, the directory listing and the zarr arrays
all go through `ptransfer.core.fileio`, none through `os.path`.
"""

from __future__ import annotations

import os
import uuid

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from ptransfer.backbones import load_backbone, t5
from ptransfer.checkpoints import t5x
from ptransfer.checkpoints.tree import flatten
from ptransfer.core.errors import CheckpointError

gfile = tf.io.gfile
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "t5")


@pytest.fixture
def ram():
    root = f"ram://t5x-test-{uuid.uuid4().hex[:10]}"
    yield root
    if gfile.exists(root):
        gfile.rmtree(root)


def _upload(local_dir: str, remote_dir: str) -> None:
    for dirpath, _, files in os.walk(local_dir):
        rel = os.path.relpath(dirpath, local_dir)
        target = remote_dir if rel == "." else f"{remote_dir}/{rel}"
        gfile.makedirs(target)
        for name in files:
            gfile.copy(os.path.join(dirpath, name), f"{target}/{name}")


def test_checkpoint_on_ram_reads_like_the_local_one(ram, tmp_path):
    rng = np.random.default_rng(0)
    params = {"encoder": {"kernel": rng.normal(size=(6, 4)).astype(np.float32),
                          "scale": rng.normal(size=(3,)).astype(ml_dtypes.bfloat16),
                          "bias": np.arange(5, dtype=np.float32)}}
    for step in (10, 30):
        t5x.write_t5x_checkpoint(params, str(tmp_path / f"checkpoint_{step}"), step=step,
                                 inline_max_size=5)  # bias inline, the others zarr
    _upload(str(tmp_path), f"{ram}/run")
    ckpt = t5x.T5XCheckpoint(f"{ram}/run/")  # parent dir: the latest step wins
    assert ckpt.directory == f"{ram}/run/checkpoint_30" and int(ckpt.step) == 30
    assert sorted(ckpt.keys()) == ["encoder/bias", "encoder/kernel", "encoder/scale"]
    for key, want in flatten(params).items():
        got = ckpt.get(key)
        assert got.dtype == want.dtype, key
        np.testing.assert_array_equal(got, want, err_msg=key)
    # the `checkpoint` file itself names the directory too
    assert t5x.resolve_checkpoint_dir(f"{ram}/run/checkpoint_10/checkpoint") == f"{ram}/run/checkpoint_10"


def test_t5_backbone_loads_from_ram_with_the_same_logits(ram, tmp_path):
    local = t5.from_hf(os.path.join(FIXTURES, "t5_v1_1"))
    t5x.write_t5x_checkpoint(local.params, str(tmp_path / "checkpoint_5"), step=5)
    _upload(str(tmp_path), f"{ram}/t5")
    remote = load_backbone(f"t5x:t5_1_1_tiny:{ram}/t5")
    ref = dict(np.load(os.path.join(FIXTURES, "t5_v1_1", "reference.npz")))
    got = remote.logits(ref["inputs"], ref["targets"], prompt=ref["prompt"])
    assert float(np.max(np.abs(np.asarray(got) - ref["logits_prompt"]))) < 1e-4


def test_missing_remote_checkpoint_and_array_are_clear_errors(ram, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        t5x.T5XCheckpoint(f"{ram}/nothing")
    t5x.write_t5x_checkpoint({"w": np.ones((4, 4), np.float32)}, str(tmp_path / "checkpoint_1"))
    _upload(str(tmp_path), f"{ram}/c")
    gfile.rmtree(f"{ram}/c/checkpoint_1/target.w")
    ckpt = t5x.T5XCheckpoint(f"{ram}/c/checkpoint_1")
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.get("w")


def test_gs_paths_use_tensorstores_gcs_driver():
    """gs:// is read by tensorstore's GCS driver directly (no copy); local by `file`."""
    assert t5x.kvstore_spec("gs://bucket/ckpts/checkpoint_1100000/target.encoder.x") == {
        "driver": "gcs", "bucket": "bucket", "path": "ckpts/checkpoint_1100000/target.encoder.x/"}
    assert t5x.kvstore_spec("/data/c/target.x") == {"driver": "file", "path": "/data/c/target.x"}
    assert t5x.kvstore_spec("ram://c/target.x") is None  # copied through fileio instead
    import tensorstore as ts

    # the driver is compiled into this tensorstore build (opening a spec needs no network)
    spec = ts.KvStore.Spec({"driver": "gcs", "bucket": "bucket", "path": "x/"})
    assert spec.to_json()["driver"] == "gcs"
