"""The trainer end to end on tiny models: fitting with only the prompt changing,
its outputs (bank entry, curve, PEFT round trip) and its refusals of bad input."""

import dataclasses
import json
import os

import numpy as np
import pytest
from _trainer_common import backbone, host_copy, register_tiny_yesno, trees_equal, write_justice

from ptransfer.cli import main as cli
from ptransfer.core.errors import CheckpointError, ConfigError, DataError
from ptransfer.training.optimizer import OptimizerConfig
from ptransfer.training.trainer import NonFiniteLossError, TrainConfig, Trainer

ADAMW = OptimizerConfig(name="adamw", learning_rate=0.1, weight_decay=0.0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_justice(str(tmp_path_factory.mktemp("data")))


def fit_config(model_dir, data_dir, task="tiny_yesno", **kw):
    base = dict(backbone="preset:t5_tiny", task=task, model_dir=str(model_dir), prompt_length=20,
                init_from="vocab", batch_size=8, train_steps=80, optimizer=ADAMW,
                input_length=8, target_length=4, eval_split="train", eval_every=20,
                eval_examples=None, checkpoint_every=40, data_dir=data_dir, progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("preset,scale", [("t5_tiny", 6.0), ("llama_tiny", 1.0)])
def test_prompt_alone_fits_a_small_task(preset, scale, data_dir, tmp_path, monkeypatch):
    from ptransfer.bank import store as bank

    register_tiny_yesno(monkeypatch)
    bb = backbone(preset, scale)
    frozen = host_copy(bb.params)
    cfg = fit_config(tmp_path / "run", data_dir, backbone=f"preset:{preset}")
    result = Trainer(cfg, backbone=bb).run()

    assert trees_equal(frozen, bb.params), "frozen params changed"
    curve = result.curve
    assert [r["step"] for r in curve] == [0, 20, 40, 60, 80]
    assert curve[0]["accuracy"] < 100.0 and curve[-1]["accuracy"] == 100.0, curve
    assert result.best_score == 100.0 and result.steps == 80
    prompt, meta, rows = bank.read_entry(result.bank_entry)
    np.testing.assert_array_equal(prompt, result.best_prompt)
    assert rows == curve and meta["best_score"] == 100.0 and meta["init"] == "vocab"
    assert meta["backbone"] == preset and meta["task"] == "tiny_yesno"
    np.testing.assert_array_equal(np.load(tmp_path / "run" / "prompt.npy"), result.final_prompt)
    from ptransfer import prompts  # a finished model dir is an INIT_FROM source (its best)
    np.testing.assert_array_equal(prompts.init_prompt(str(tmp_path / "run"), bb, 20),
                                  result.best_prompt)
    assert not np.array_equal(result.final_prompt, _initial_prompt(bb, cfg))
    assert os.listdir(tmp_path / "run" / "tb" / "train")  # TensorBoard events

    # `ptransfer eval` of the bank entry on the same examples gives the same score.
    from ptransfer.training.evaluation import EvalConfig, run_eval

    out = run_eval(EvalConfig(backbone=cfg.backbone, task="tiny_yesno", prompt=result.bank_entry,
                              split="train", batch_size=8, input_length=8, target_length=4,
                              data_dir=data_dir, output=str(tmp_path / "eval.json")),
                   backbone=bb)
    assert out["metrics"]["accuracy"] == 100.0 and out["examples"] == 8
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"] == out["metrics"]


def _initial_prompt(bb, cfg):
    from ptransfer import prompts

    return prompts.init_prompt(cfg.init_from, bb, cfg.prompt_length, seed=cfg.seed)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    from ptransfer.training import checkpointing

    register_tiny_yesno(monkeypatch)
    bb = backbone("t5_tiny", 6.0)  # same compiled step as the fit test: the rate is state
    cfg = fit_config(tmp_path / "nan", data_dir, eval_every=0, checkpoint_every=1,
                     optimizer=dataclasses.replace(ADAMW, learning_rate=1e38))
    with pytest.raises(NonFiniteLossError) as err:
        Trainer(cfg, backbone=bb).run()
    msg = str(err.value)
    bad = int(msg.split(" at step ")[1].split(";")[0])
    ckpt = checkpointing.Checkpointer(str(tmp_path / "nan"))
    assert ckpt.all_steps() and max(ckpt.all_steps()) == bad - 1
    assert f"last good checkpoint is step {bad - 1}" in msg
    assert not (tmp_path / "nan" / "bank").exists()


def test_optimizer_presets_warmup_and_clipping():
    import jax.numpy as jnp

    from ptransfer.training.optimizer import make_optimizer, optimizer_config

    assert optimizer_config("adafactor").learning_rate == 0.3
    assert optimizer_config("adamw_t5").learning_rate == 5e-3
    assert optimizer_config("adamw_roberta").learning_rate == 1e-4
    with pytest.raises(ConfigError, match="'adamw_t5'"):
        optimizer_config("adamw_t6")
    cfg = optimizer_config("adamw_t5", learning_rate=1.0, warmup_steps=4, clip_norm=0.5)
    opt = make_optimizer(cfg)
    params = jnp.zeros(3)
    state = opt.init(params)
    steps = []
    for _ in range(6):  # Adam's first steps move each weight by ~lr(t)
        updates, state = opt.update(jnp.array([100.0, 0.0, 0.0]), state, params)
        steps.append(float(-updates[0]))
    np.testing.assert_allclose(steps[:5], [0.0, 0.25, 0.5, 0.75, 1.0], atol=2e-3)
    # Clipping acts before Adam: a gradient clipped to norm 1e-9 is below Adam's eps (1e-8),
    # so the first step shrinks to ~lr * 1e-9 / (1e-9 + 1e-8) instead of ~lr.
    clip = make_optimizer(optimizer_config("adamw_t5", learning_rate=1.0, clip_norm=1e-9))
    clipped, _ = clip.update(jnp.array([100.0, 0.0, 0.0]), clip.init(params), params)
    assert float(-clipped[0]) == pytest.approx(1e-9 / 1.1e-8, rel=1e-3)
    state = make_optimizer(optimizer_config("adafactor")).init(params)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.3)  # rate is state


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def _train_args(tmp_path, data_dir, *extra):
    return ("train", "--gin_file=models/t5_tiny.gin", "--gin_file=runs/prompt_tune.gin",
            "--gin.TASK=justice", f"--gin.MODEL_DIR={tmp_path / 'cli'}", "--gin.TRAIN_STEPS=2",
            f"--gin.DATA_DIR={data_dir}", *extra)


def test_bad_names_fail_before_anything_is_loaded(capsys, tmp_path, data_dir):
    code, err = _cli(capsys, *_train_args(tmp_path, data_dir, "--gin.TASK=justic"))
    assert code == 2 and "unknown task 'justic'" in err and "'justice'" in err
    code, err = _cli(capsys, *_train_args(tmp_path, data_dir, "--gin.BACKBONE=preset:t5_tny"))
    assert code == 2 and "unknown preset 't5_tny'" in err and "'t5_tiny'" in err
    code, err = _cli(capsys, *_train_args(tmp_path, data_dir, "--gin.TrainConfig.eval_evry=3"))
    assert code == 2 and "eval_evry" in err
    code, err = _cli(capsys, *_train_args(tmp_path, data_dir, "--gin.TRAIN_STEP=3"))
    assert code == 2 and "TRAIN_STEP" in err and "'TRAIN_STEPS'" in err
    code, err = _cli(capsys, "train", "--gin_file=models/t5_tiny.gin",
                     "--gin_file=runs/prompt_tune.gin", "--gin.TASK=justice")
    assert code == 2 and "MODEL_DIR" in err and "TRAIN_STEPS" in err
    code, err = _cli(capsys, "train", "--gin_file=models/t5_tny.gin")
    assert code == 2 and "not found" in err
    assert not (tmp_path / "cli").exists()


def test_bad_inputs_are_refused_with_one_message(data_dir, tmp_path, monkeypatch):
    register_tiny_yesno(monkeypatch)
    bb = backbone("t5_tiny", 6.0)
    np.save(tmp_path / "wide.npy", np.zeros((20, bb.d_model * 2), np.float32))
    with pytest.raises(ConfigError, match="ptransfer project apply"):
        Trainer(fit_config(tmp_path / "w", data_dir, init_from=str(tmp_path / "wide.npy")),
                backbone=bb).run()

    empty = write_justice(str(tmp_path / "empty_data"), empty_train=True)
    with pytest.raises(DataError, match="empty"):
        Trainer(fit_config(tmp_path / "e", empty), backbone=bb).run()

    (tmp_path / "other").mkdir()
    Trainer(fit_config(tmp_path / "other", data_dir, train_steps=1, eval_every=0),
            backbone=bb).run()
    with pytest.raises(CheckpointError, match=r"different run \(seed: 0 there vs 1 now\)"):
        Trainer(fit_config(tmp_path / "other", data_dir, train_steps=1, eval_every=0, seed=1),
                backbone=bb).run()


def test_peft_round_trip_through_the_bank_cli(tmp_path, capsys):
    from safetensors.numpy import load_file

    from ptransfer.bank import store as bank

    prompt = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    entry = bank.write_entry(str(tmp_path / "bank"), "t5_tiny", "justice", "r0", prompt,
                             {"init": "vocab", "steps": 3, "best_score": 50.0,
                              "metric": "accuracy", "seed": 0, "family": "t5",
                              "backbone_spec": "preset:t5_tiny"})  # as the trainer writes
    peft = tmp_path / "peft"
    assert cli.main(["bank", "export", entry, "--bank", str(tmp_path / "bank"),
                     "--format", "peft", "--out", str(peft)]) == 0
    config = json.loads((peft / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == "SEQ_2_SEQ_LM"
    assert config["num_virtual_tokens"] == 5 and config["token_dim"] == 32
    tensors = load_file(str(peft / "adapter_model.safetensors"))
    assert list(tensors) == ["prompt_embeddings"]
    np.testing.assert_array_equal(tensors["prompt_embeddings"][:5], prompt)
    assert cli.main(["bank", "import", str(peft), "--bank", str(tmp_path / "bank"),
                     "--backbone", "t5_tiny", "--task", "justice", "--run", "back"]) == 0
    capsys.readouterr()
    back, _, _ = bank.read_entry(bank.entry_dir(str(tmp_path / "bank"), "t5_tiny", "justice",
                                                "back"))
    np.testing.assert_array_equal(back, prompt)
