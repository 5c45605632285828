"""HF PEFT prompt-tuning format, checked against adapters saved by real PEFT
(tests/fixtures/peft/, written by tests/fixtures/gen_peft.py)."""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors import safe_open

from ptransfer.bank import peft_format
from ptransfer.core.errors import CheckpointError, ConfigError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "peft")


def _config(path):
    with open(os.path.join(path, "adapter_config.json")) as f:
        return json.load(f)


def _tensors(path):
    import ml_dtypes  # noqa: F401  (bfloat16 for numpy)

    with safe_open(os.path.join(path, "adapter_model.safetensors"), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("name", ["t5", "llama"])
def test_import_of_real_peft_adapter(name):
    src = os.path.join(FIXTURES, name)
    prompt, config = peft_format.import_peft(src)
    expected = np.load(os.path.join(src, "expected_prompt.npy"), allow_pickle=False)
    assert prompt.dtype == np.float32
    np.testing.assert_array_equal(prompt, expected)
    assert config["num_virtual_tokens"] == prompt.shape[0] == 4


@pytest.mark.parametrize("name,task_type", [("t5", "SEQ_2_SEQ_LM"), ("llama", "CAUSAL_LM")])
def test_export_matches_peft_layout_and_round_trips(tmp_path, name, task_type):
    ref = os.path.join(FIXTURES, name)
    ref_config, ref_tensors = _config(ref), _tensors(ref)
    prompt = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    out = peft_format.export_peft(prompt, str(tmp_path / name), task_type,
                                  num_layers=2, num_attention_heads=4)
    config, tensors = _config(out), _tensors(out)
    assert set(config) == set(ref_config)  # every field PEFT writes, no more
    for key in ("peft_type", "task_type", "num_virtual_tokens", "token_dim",
                "num_transformer_submodules", "num_layers", "num_attention_heads",
                "inference_mode", "prompt_tuning_init"):
        assert config[key] == ref_config[key], key
    assert set(tensors) == set(ref_tensors) == {"prompt_embeddings"}
    assert tensors["prompt_embeddings"].shape == ref_tensors["prompt_embeddings"].shape
    rows = 4 * ref_config["num_transformer_submodules"]
    assert tensors["prompt_embeddings"].shape == (rows, 16)
    np.testing.assert_array_equal(tensors["prompt_embeddings"][:4], prompt)
    back, _ = peft_format.import_peft(out)
    np.testing.assert_array_equal(back, prompt)


def test_import_refuses_other_adapters_and_pickles(tmp_path):
    lora = tmp_path / "lora"
    shutil.copytree(os.path.join(FIXTURES, "llama"), lora)
    config = _config(lora)
    with open(lora / "adapter_config.json", "w") as f:
        json.dump({**config, "peft_type": "LORA"}, f)
    with pytest.raises(CheckpointError, match="'LORA' adapter"):
        peft_format.import_peft(str(lora))

    pickled = tmp_path / "pickled"
    shutil.copytree(os.path.join(FIXTURES, "llama"), pickled)
    os.rename(pickled / "adapter_model.safetensors", pickled / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        peft_format.import_peft(str(pickled))

    wrong = tmp_path / "wrong"
    shutil.copytree(os.path.join(FIXTURES, "t5"), wrong)
    t5_config = _config(wrong)
    with open(wrong / "adapter_config.json", "w") as f:
        json.dump({**t5_config, "num_transformer_submodules": 1}, f)
    with pytest.raises(CheckpointError, match=r"shape \(8, 16\)"):
        peft_format.import_peft(str(wrong))

    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        peft_format.import_peft(str(tmp_path))
    with pytest.raises(ConfigError, match="unknown PEFT task_type"):
        peft_format.export_peft(np.zeros((2, 3)), str(tmp_path / "x"), "SEQ2SEQ")


def test_task_type_from_meta():
    assert peft_format.task_type_for({"family": "t5"}) == "SEQ_2_SEQ_LM"
    assert peft_format.task_type_for({"backbone_spec": "gguf:/m.gguf"}) == "CAUSAL_LM"
    assert peft_format.task_type_for({}, "SEQ_CLS") == "SEQ_CLS"
    with pytest.raises(ConfigError, match="--task-type"):
        peft_format.task_type_for({"backbone": "roberta", "family": "mlm"})
