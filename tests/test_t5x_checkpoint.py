"""T5X checkpoints: the on-disk format, round trips, and bad checkpoints."""

import os

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from ptransfer.backbones import load_backbone, t5
from ptransfer.checkpoints.t5x import T5XCheckpoint, write_t5x_checkpoint
from ptransfer.checkpoints.tree import flatten
from ptransfer.core.errors import CheckpointError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "t5")


@pytest.fixture(scope="module")
def v11():
    return t5.from_hf(os.path.join(FIXTURES, "t5_v1_1"))


@pytest.fixture(scope="module")
def v11_ckpt(v11, tmp_path_factory):
    root = tmp_path_factory.mktemp("t5x")
    return write_t5x_checkpoint(v11.params, str(root / "checkpoint_1000"), step=1000)


def _assert_same_params(a, b):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def test_written_layout_is_t5x(v11_ckpt):
    """The msgpack holds {'version': 3, 'optimizer': {'target': ..., 'state': ...}}
    with tensorstore zarr specs whose paths are relative `target.<dotted name>`."""
    with open(os.path.join(v11_ckpt, "checkpoint"), "rb") as f:
        raw = msgpack.unpackb(f.read(), raw=False)
    assert raw["version"] == 3 and set(raw["optimizer"]) == {"target", "state"}
    spec = raw["optimizer"]["target"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]
    assert spec["driver"] == "zarr" and spec["dtype"] == "float32"
    assert spec["kvstore"] == {"driver": "file", "path": "target.encoder.layers_0.attention.query.kernel"}
    assert spec["metadata"]["shape"] == [32, 32] and spec["metadata"]["compressor"] == {"id": "gzip"}
    rel = raw["optimizer"]["target"]["decoder"]["relpos_bias"]["rel_embedding"]
    assert rel["metadata"]["shape"] == [4, 8]  # [heads, buckets]
    assert os.path.isfile(os.path.join(v11_ckpt, "target.decoder.logits_dense.kernel", ".zarray"))
    ckpt = T5XCheckpoint(v11_ckpt)
    assert int(ckpt.step) == 1000 and ckpt.version == 3


def test_round_trip_gives_identical_params(v11, v11_ckpt):
    back = t5.from_t5x(v11_ckpt, "t5_1_1_tiny")
    _assert_same_params(v11.params, back.params)
    ref = dict(np.load(os.path.join(FIXTURES, "t5_v1_1", "reference.npz")))
    got = back.logits(ref["inputs"], ref["targets"], prompt=ref["prompt"])
    assert float(np.max(np.abs(np.asarray(got) - ref["logits_prompt"]))) < 1e-4
    # parent directory: the latest checkpoint_<step> is picked, through load_backbone
    spec = f"t5x:t5_1_1_tiny:{os.path.dirname(v11_ckpt)}"
    _assert_same_params(v11.params, load_backbone(spec).params)


def test_inline_arrays_and_bfloat16(tmp_path):
    """bfloat16 storage: HF weights cast on load, written as bfloat16 zarr plus
    small arrays inline in the msgpack (as T5X writes unpartitioned ones), read
    back exactly; logits stay float32 and near the float32 reference."""
    bb = t5.from_hf(os.path.join(FIXTURES, "t5_v1_1"), dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(bb.params))
    path = write_t5x_checkpoint(bb.params, str(tmp_path / "checkpoint_7"), inline_max_size=64)
    ckpt = T5XCheckpoint(path)
    assert isinstance(ckpt._leaves["encoder/encoder_norm/scale"], np.ndarray)
    assert not os.path.exists(os.path.join(path, "target.encoder.encoder_norm.scale"))
    back = t5.from_t5x(path, "t5_1_1_tiny", dtype=jnp.bfloat16)
    _assert_same_params(bb.params, back.params)
    ref = dict(np.load(os.path.join(FIXTURES, "t5_v1_1", "reference.npz")))
    got = back.logits(ref["inputs"], ref["targets"])
    assert got.dtype == jnp.float32
    assert float(np.max(np.abs(np.asarray(got) - ref["logits"]))) < 0.25  # bf16 weights


def test_hf_to_t5x_conversion_keeps_logits(tmp_path):
    v10 = t5.from_hf(os.path.join(FIXTURES, "t5_v1_0"))
    path = write_t5x_checkpoint(v10.params, str(tmp_path / "checkpoint_0"))
    back = t5.from_t5x(path, "t5_tiny")
    ref = dict(np.load(os.path.join(FIXTURES, "t5_v1_0", "reference.npz")))
    got = back.logits(ref["inputs"], ref["targets"])
    assert float(np.max(np.abs(np.asarray(got) - ref["logits"]))) < 1e-4


def test_wrong_preset_is_one_clear_error(v11_ckpt):
    with pytest.raises(CheckpointError, match="does not match preset 't5_tiny'.*logits_dense"):
        t5.from_t5x(v11_ckpt, "t5_tiny")


def test_wrong_shape_is_one_clear_error(v11, tmp_path):
    params = jax.tree_util.tree_map(np.asarray, v11.params)
    params["encoder"]["layers_1"]["mlp"]["wo"]["kernel"] = np.zeros((64, 32), np.float32)
    path = write_t5x_checkpoint(params, str(tmp_path / "checkpoint_1"))
    with pytest.raises(CheckpointError, match=r"encoder/layers_1/mlp/wo/kernel has shape \(64, 32\)"
                                              r".*expects \(48, 32\)"):
        t5.from_t5x(path, "t5_1_1_tiny")


def test_missing_and_corrupt_checkpoints(v11, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        t5.from_t5x(str(tmp_path / "nope"), "t5_tiny")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no 'checkpoint' file"):
        T5XCheckpoint(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint").write_bytes(b"\xc1\xc1garbage")
    with pytest.raises(CheckpointError, match="not a readable T5X msgpack"):
        T5XCheckpoint(str(tmp_path / "bad"))
    path = write_t5x_checkpoint(v11.params, str(tmp_path / "checkpoint_2"))
    with pytest.raises(CheckpointError, match="already exists"):
        write_t5x_checkpoint(v11.params, path)
    import shutil
    shutil.rmtree(os.path.join(path, "target.decoder.decoder_norm.scale"))
    with pytest.raises(CheckpointError, match="decoder/decoder_norm/scale"):
        t5.from_t5x(path, "t5_1_1_tiny")


def test_array_paths_outside_the_checkpoint_are_refused(tmp_path):
    from flax import serialization

    d = tmp_path / "checkpoint_3"
    d.mkdir()
    spec = {"driver": "zarr", "dtype": "float32", "kvstore": {"driver": "file", "path": "../../etc"},
            "metadata": {"shape": [2], "chunks": [2], "compressor": {"id": "gzip"}}}
    (d / "checkpoint").write_bytes(serialization.msgpack_serialize(
        {"version": 3, "optimizer": {"target": {"x": spec}, "state": {}}}))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        T5XCheckpoint(str(d)).get("x")
