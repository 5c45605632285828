"""HF safetensors reading: single file, sharded index, refused and broken inputs."""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from ptransfer.backbones import t5
from ptransfer.checkpoints.safetensors_io import SafetensorsCheckpoint
from ptransfer.core.errors import CheckpointError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "t5", "t5_v1_1")


def _tensors():
    with safe_open(os.path.join(FIXTURE, "model.safetensors"), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _write_sharded(directory, tensors):
    """Two shards plus model.safetensors.index.json, as HF writes for T5-XXL."""
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, os.path.join(directory, shard))
        weight_map.update({k: shard for k in keys})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    return shards


def test_single_file_reads_every_tensor():
    ckpt = SafetensorsCheckpoint(FIXTURE)
    tensors = _tensors()
    assert sorted(ckpt.keys()) == sorted(tensors) and "lm_head.weight" in ckpt
    np.testing.assert_array_equal(ckpt.get("lm_head.weight"), tensors["lm_head.weight"])
    assert ckpt.get("shared.weight", np.float16).dtype == np.float16


def test_sharded_index_loads_the_same_model(tmp_path):
    tensors = _tensors()
    _write_sharded(tmp_path, tensors)
    shutil.copy(os.path.join(FIXTURE, "config.json"), tmp_path)
    ckpt = SafetensorsCheckpoint(str(tmp_path))
    assert sorted(ckpt.keys()) == sorted(tensors)
    for k in ("shared.weight", "lm_head.weight", "decoder.final_layer_norm.weight"):
        np.testing.assert_array_equal(ckpt.get(k), tensors[k])
    ref = dict(np.load(os.path.join(FIXTURE, "reference.npz")))
    got = t5.from_hf(str(tmp_path)).logits(ref["inputs"], ref["targets"], prompt=ref["prompt"])
    assert float(np.max(np.abs(np.asarray(got) - ref["logits_prompt"]))) < 1e-4


def test_missing_shard_and_bad_index(tmp_path):
    shards = _write_sharded(tmp_path, _tensors())
    os.remove(tmp_path / sorted(shards)[1])
    with pytest.raises(CheckpointError, match="missing.*00002-of-00002"):
        SafetensorsCheckpoint(str(tmp_path))
    (tmp_path / "model.safetensors.index.json").write_text("{\"no_map\": 1}")
    with pytest.raises(CheckpointError, match="weight_map"):
        SafetensorsCheckpoint(str(tmp_path))


def test_missing_tensor_names_it(tmp_path):
    tensors = _tensors()
    del tensors["encoder.final_layer_norm.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(FIXTURE, "config.json"), tmp_path)
    with pytest.raises(CheckpointError, match="encoder.final_layer_norm.weight"):
        t5.from_hf(str(tmp_path))


def test_corrupt_file_and_pickles(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        SafetensorsCheckpoint(str(tmp_path))
    other = tmp_path / "pt"
    other.mkdir()
    (other / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(CheckpointError, match="never unpickles"):
        SafetensorsCheckpoint(str(other))
    with pytest.raises(CheckpointError, match="does not exist"):
        SafetensorsCheckpoint(str(tmp_path / "absent"))
