"""The same run on 8 simulated devices, mesh (data=2, model=4), and on one device
ends with the same prompt (within float tolerance: reductions are split)."""

import json

import gin
import numpy as np
from _trainer_common import REPO, backbone, cli_env, run_cli, train_argv, write_justice


def test_eight_device_mesh_matches_one_device(tmp_path, monkeypatch):
    from ptransfer.cli import gin_setup
    from ptransfer.training.trainer import Trainer, build_train_config

    data = write_justice(str(tmp_path / "data"))
    macros = dict(TRAIN_STEPS=8, EVAL_EVERY=4, BATCH_SIZE=8, CHECKPOINT_EVERY=4)

    mesh_dir = str(tmp_path / "mesh")
    argv = train_argv(mesh_dir, data, MESH_DATA=2, MESH_MODEL=4, **macros)
    proc = run_cli(argv, cli_env(str(tmp_path / "jax_cache"), devices=8))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 8

    one_dir = str(tmp_path / "one")
    argv = train_argv(one_dir, data, MESH_DATA=1, MESH_MODEL=1, **macros)
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_file=")]
    bindings = [a[len("--gin."):] for a in argv if a.startswith("--gin.")]
    monkeypatch.chdir(REPO)
    try:
        gin_setup.parse_gin(files, bindings)
        cfg = build_train_config()
    finally:
        gin.clear_config()
    result = Trainer(cfg, backbone=backbone("t5_tiny")).run()

    mesh_prompt = np.load(f"{mesh_dir}/prompt.npy")
    np.testing.assert_allclose(mesh_prompt, result.final_prompt, rtol=1e-4, atol=1e-5)
    assert not np.allclose(result.final_prompt, _init(cfg), atol=1e-4)  # it did train
    with open(f"{mesh_dir}/metrics.jsonl") as f:
        mesh_curve = [json.loads(line) for line in f]
    assert [r["step"] for r in mesh_curve] == [r["step"] for r in result.curve] == [0, 4, 8]
    for a, b in zip(mesh_curve, result.curve):
        assert a["accuracy"] == b["accuracy"]
        if "loss" in a:
            assert abs(a["loss"] - b["loss"]) < 1e-4


def _init(cfg):
    from ptransfer import prompts

    return prompts.init_prompt(cfg.init_from, backbone("t5_tiny"), cfg.prompt_length, seed=cfg.seed)
