"""launch/tpu_pod.sh and launch/gpu_host.sh, run as real subprocesses.

--dry-run output is parsed back with shlex and, for the remote training
command, executed by a real bash against a stand-in `ptransfer` that records
its argv, so quoting is checked end to end. Failure handling runs the real
script with a stand-in `gcloud` executable first on PATH.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU_POD = ROOT / "launch" / "tpu_pod.sh"
GPU_HOST = ROOT / "launch" / "gpu_host.sh"
GIN_FILE = "experiments/t5_xxl/sst2.gin"
# A binding whose value has spaces, both quote kinds, $, backticks and ';'.
TRICKY = """NOTE="it's a `x` $HOME; echo 'pwned' \\"q\\"\""""
BASE = ["--zone", "us-central2-b", "--project", "my-proj", "--name", "pt-test",
        "--gin_file", GIN_FILE, "--gin", TRICKY, "--gin", "TRAIN_STEPS=10"]
TPU_CMD = ["gcloud", "compute", "tpus", "tpu-vm"]

# Records argv (one line per call, words separated by \x1f); fails as FAKE_FAIL says.
FAKE_GCLOUD = r"""#!/usr/bin/env bash
(IFS=$'\x1f'; printf '%s\n' "$*") >> "$FAKE_GCLOUD_LOG"
case " $* " in
  *" tpu-vm describe "*) exit "${FAKE_DESCRIBE_RC:-1}" ;;
  *" ssh "*"ptransfer train"*)
    case ${FAKE_FAIL:-} in
      train) echo "worker 3: RESOURCE_EXHAUSTED" >&2; exit 7 ;;
      hang) : > "$FAKE_GCLOUD_LOG.hanging"; exec sleep 30 ;;
    esac ;;
  *" ssh "*) [[ ${FAKE_FAIL:-} == setup ]] && exit 5 ;;
esac
exit 0
"""

# Stands in for the workers' `ptransfer`: records argv and the environment.
FAKE_PTRANSFER = """#!{python}
import json, os, sys
with open(os.environ["ARGV_OUT"], "w") as f:
    json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}, f)
"""


def run_script(script, args, env=None, check=True, timeout=60):
    proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def plan(script, args, env=None):
    """The dry-run commands, each as its list of words."""
    out = run_script(script, ["--dry-run", *args], env=env).stdout
    return [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]


def remote_command(cmd):
    (arg,) = [w for w in cmd if w.startswith("--command=")]
    return arg[len("--command="):]


def is_tpu(cmd, verb):
    return cmd[:5] == TPU_CMD + [verb]


def test_tpu_dry_run_plan_order_and_workers():
    cmds = plan(TPU_POD, BASE + ["--accelerator", "v4-8"])
    verbs = [c[4] if c[:4] == TPU_CMD else c[0] for c in cmds]
    assert verbs == ["describe", "create", "tar", "scp", "ssh", "ssh", "delete"]
    create = cmds[1]
    assert create[5] == "pt-test"
    for flag in ("--zone=us-central2-b", "--project=my-proj", "--accelerator-type=v4-8",
                 "--version=tpu-ubuntu2204-base"):
        assert flag in create
    for c in cmds:
        if is_tpu(c, "ssh") or is_tpu(c, "scp"):
            assert "--worker=all" in c, c
            assert "--zone=us-central2-b" in c and "--project=my-proj" in c
    tarball = cmds[2][cmds[2].index("-czf") + 1]
    assert cmds[3][5:7] == [tarball, "pt-test:ptransfer-src.tar.gz"]
    setup = remote_command(cmds[4])
    assert "pip install -q -e ~/ptransfer 'jax[tpu]'" in setup
    assert setup.startswith("set -euo pipefail;")
    assert "ptransfer train" in remote_command(cmds[5])
    assert cmds[-1] == TPU_CMD + ["delete", "pt-test", "--zone=us-central2-b",
                                  "--project=my-proj", "--quiet"]


@pytest.mark.parametrize("script", [TPU_POD, GPU_HOST])
def test_help(script):
    proc = run_script(script, ["--help"])
    assert "--dry-run" in proc.stdout and "--gin_file" in proc.stdout


def test_tpu_default_name_is_a_valid_tpu_name():
    args = [a for a in BASE if a not in ("--name", "pt-test")]
    cmds = plan(TPU_POD, args, env={"USER": "Ada_L"})
    create = [c for c in cmds if is_tpu(c, "create")][0]
    assert create[5] == "ptransfer-ada-l"


def test_tpu_accelerator_alias_and_runtime():
    cmds = plan(TPU_POD, BASE + ["--accelerator", "v5e-16", "--spot"])
    create = [c for c in cmds if is_tpu(c, "create")][0]
    assert "--accelerator-type=v5litepod-16" in create
    assert "--version=v2-alpha-tpuv5-lite" in create and "--spot" in create


@pytest.fixture
def fake_worker(tmp_path):
    """A home directory laid out like a set-up worker, with a recording ptransfer."""
    home = tmp_path / "home"
    (home / "ptransfer").mkdir(parents=True)
    bin_dir = home / "ptransfer-venv" / "bin"
    bin_dir.mkdir(parents=True)
    exe = bin_dir / "ptransfer"
    exe.write_text(FAKE_PTRANSFER.format(python=sys.executable))
    exe.chmod(0o755)
    return home


def test_tpu_train_command_quoting_survives_remote_shell(fake_worker, tmp_path):
    extra = ["--", "--extra", "a b"]
    cmds = plan(TPU_POD, BASE + ["--env", "TFDS_DATA_DIR=gs://b/tf ds"] + extra)
    train = remote_command(cmds[5])
    expect = ["train", f"--gin_file={GIN_FILE}", f"--gin.{TRICKY}", "--gin.TRAIN_STEPS=10",
              "--extra", "a b"]
    words = shlex.split(train)
    start = words.index("~/ptransfer-venv/bin/ptransfer") + 1
    assert words[start:start + len(expect)] == expect
    # The worker's login shell runs the string: the real bash must see the same argv.
    out = tmp_path / "argv.json"
    env = {"HOME": str(fake_worker), "ARGV_OUT": str(out), "PATH": os.environ["PATH"]}
    subprocess.run(["bash", "-c", train], env=env, check=True, timeout=60)
    got = json.loads(out.read_text())
    assert got["argv"] == expect
    assert got["cwd"] == str(fake_worker / "ptransfer")
    assert got["env"]["PTRANSFER_DISTRIBUTED"] == "1"
    assert got["env"]["TFDS_DATA_DIR"] == "gs://b/tf ds"
    assert (fake_worker / "ptransfer-train.log").exists()


def test_tpu_bucket_sets_model_dir_and_saves_logs_before_delete():
    cmds = plan(TPU_POD, BASE + ["--bucket", "gs://my-bkt/runs/"])
    assert cmds[0][:4] == ["gcloud", "storage", "buckets", "describe"]
    assert cmds[0][4] == "gs://my-bkt"
    train = shlex.split(remote_command(cmds[-3]))
    assert "--gin.MODEL_DIR='gs://my-bkt/runs/pt-test/model'" in train
    save_logs = remote_command(cmds[-2])
    assert "gs://my-bkt/runs/pt-test/logs/$(hostname).log" in save_logs
    assert "--worker=all" in cmds[-2] and is_tpu(cmds[-1], "delete")
    # An explicit MODEL_DIR wins over the bucket default.
    cmds = plan(TPU_POD, BASE + ["--bucket", "gs://my-bkt", "--gin", "MODEL_DIR='gs://x/y'"])
    train = shlex.split(remote_command(cmds[-3]))
    assert [w for w in train if w.startswith("--gin.MODEL_DIR")] == ["--gin.MODEL_DIR='gs://x/y'"]


def test_tpu_keep_repo_and_reuse():
    proc = run_script(TPU_POD, ["--dry-run", "--keep", "--reuse", "--repo",
                                "https://github.com/me/ptransfer.git", "--ref", "v1"] + BASE)
    cmds = [shlex.split(x) for x in proc.stdout.splitlines() if not x.startswith("#")]
    assert not any(is_tpu(c, v) for c in cmds for v in ("delete", "create", "scp", "describe"))
    assert not any(c[0] == "tar" for c in cmds)
    setup = remote_command(cmds[0])
    assert "git clone -q https://github.com/me/ptransfer.git ~/ptransfer" in setup
    assert "checkout -q v1" in setup
    assert "--keep" in proc.stdout and "tpu-vm delete pt-test" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--gin_file", GIN_FILE], "--zone is required"),
    (["--zone", "z", "--gin_file", "nope.gin"], "gin file nope.gin not found"),
    (["--zone", "z", "--gin_file", GIN_FILE, "--gin", "no equals"], "--gin expects NAME=VALUE"),
    (["--zone", "z", "--gin_file", GIN_FILE, "--accelerator", "x9-8"], "unknown --accelerator"),
    (["--zone", "z", "--gin_file", GIN_FILE, "--name", "Bad_Name"], "not a valid TPU name"),
    (["--zone", "z", "--gin_file", GIN_FILE, "--bucket", "s3://b"], "gs:// path"),
    (["--zone", "z", "--gin_file", GIN_FILE, "--frobnicate"], "unknown argument"),
])
def test_tpu_bad_input_stops_before_any_command(args, message):
    proc = run_script(TPU_POD, ["--dry-run", *args], check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""


@pytest.fixture
def fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "gcloud"
    exe.write_text(FAKE_GCLOUD)
    exe.chmod(0o755)
    source = tmp_path / "src"
    (source / "gin_configs" / "runs").mkdir(parents=True)
    (source / "pyproject.toml").write_text("[project]\nname = 'ptransfer'\n")
    (source / "gin_configs" / "runs" / "tiny.gin").write_text("TRAIN_STEPS = 1\n")
    log = tmp_path / "gcloud.log"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_GCLOUD_LOG": str(log),
           "TMPDIR": str(tmp_path)}
    args = ["--zone", "z1", "--name", "pt-fail", "--source", str(source),
            "--gin_file", "runs/tiny.gin"]

    def calls():
        if not log.exists():
            return []
        return [line.split("\x1f") for line in log.read_text().splitlines()]

    return env, args, calls, tmp_path


def verbs_of(calls):
    return [c[3] if c[:3] == TPU_CMD[1:] else " ".join(c[:3]) for c in calls]


def test_failed_training_deletes_the_slice(fake_gcloud):
    env, args, calls, tmp = fake_gcloud
    proc = run_script(TPU_POD, args, env={**env, "FAKE_FAIL": "train"}, check=False)
    assert proc.returncode == 7, proc.stderr
    assert verbs_of(calls()) == ["describe", "create", "scp", "ssh", "ssh", "delete"]
    assert calls()[-1] == ["compute", "tpus", "tpu-vm", "delete", "pt-fail", "--zone=z1",
                           "--quiet"]
    assert "deleting slice pt-fail" in proc.stderr
    assert not (tmp / "pt-fail-src.tar.gz").exists()


def test_failed_setup_deletes_the_slice_and_skips_training(fake_gcloud):
    env, args, calls, _ = fake_gcloud
    proc = run_script(TPU_POD, args + ["--bucket", "gs://bk"],
                      env={**env, "FAKE_FAIL": "setup"}, check=False)
    assert proc.returncode == 5
    # No training ran, so there are no logs to copy: straight to delete.
    assert verbs_of(calls()) == ["storage buckets describe", "describe", "create", "scp", "ssh",
                                "delete"]


def test_success_deletes_once_and_keep_does_not(fake_gcloud):
    env, args, calls, _ = fake_gcloud
    run_script(TPU_POD, args, env=env)
    assert verbs_of(calls()) == ["describe", "create", "scp", "ssh", "ssh", "delete"]
    run_script(TPU_POD, args + ["--keep"], env=env)
    assert verbs_of(calls())[6:] == ["describe", "create", "scp", "ssh", "ssh"]


def test_existing_slice_is_never_deleted(fake_gcloud):
    env, args, calls, _ = fake_gcloud
    proc = run_script(TPU_POD, args, env={**env, "FAKE_DESCRIBE_RC": "0"}, check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert verbs_of(calls()) == ["describe"]


def _interactive_signals():
    """In the child: SIGINT / SIGTERM as a user's terminal delivers them. A test
    worker may have them ignored or blocked (by libraries loaded by earlier tests),
    and bash cannot trap a signal that was ignored when it started."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


# preexec_fn makes subprocess fork; the child only resets two signals and execs bash.
@pytest.mark.filterwarnings(r"ignore:os\.fork\(\) was called:RuntimeWarning")
def test_interrupt_during_training_deletes_the_slice(fake_gcloud):
    env, args, calls, _ = fake_gcloud
    proc = subprocess.Popen(["bash", str(TPU_POD), *args], env={**os.environ, **env,
                            "FAKE_FAIL": "hang"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_interactive_signals)
    try:
        # Interrupt only once the training step is really running (the fake has
        # become `sleep`), not while it is still starting.
        hanging = Path(env["FAKE_GCLOUD_LOG"] + ".hanging")
        deadline = time.time() + 30
        while not hanging.exists() or verbs_of(calls()).count("ssh") < 2:
            assert time.time() < deadline and proc.poll() is None, "training step never started"
            time.sleep(0.1)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130
    assert verbs_of(calls())[-1] == "delete"


def test_gpu_dry_run_runs_as_printed(fake_worker, tmp_path):
    venv = fake_worker / "ptransfer-venv"
    cmds = plan(GPU_HOST, ["--venv", str(venv), "--gin_file", GIN_FILE, "--gin", TRICKY,
                           "--gpus", "0,1", "--", "--extra", "a b"])
    assert cmds[0] == ["python3.11", "-m", "venv", str(venv)]
    assert cmds[2][:2] == [f"{venv}/bin/pip", "install"] and "jax[cuda12]" in cmds[2]
    train = cmds[-1]
    assert train[0] == "env" and "CUDA_VISIBLE_DEVICES=0,1" in train
    exe = train.index(f"{venv}/bin/ptransfer")
    expect = ["train", f"--gin_file={GIN_FILE}", f"--gin.{TRICKY}", "--extra", "a b"]
    assert train[exe + 1:] == expect
    # The printed line, run by bash, gives the trainer exactly these words.
    out = tmp_path / "argv.json"
    line = run_script(GPU_HOST, ["--dry-run", "--no-install", "--venv", str(venv),
                                 "--gin_file", GIN_FILE, "--gin", TRICKY, "--", "--extra",
                                 "a b"]).stdout.splitlines()[-1]
    subprocess.run(["bash", "-c", line], env={**os.environ, "ARGV_OUT": str(out)},
                   check=True, timeout=60)
    got = json.loads(out.read_text())
    assert got["argv"] == expect
    assert got["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"
    # The XLA flags it sets are ones this XLA knows (unknown flags abort at start-up).
    check = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                           env={**os.environ, "XLA_FLAGS": got["env"]["XLA_FLAGS"],
                                "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stderr[-2000:]


def test_gpu_host_without_gpu_stops_before_training(fake_worker, tmp_path):
    venv = fake_worker / "ptransfer-venv"
    (venv / "bin" / "python").symlink_to(sys.executable)
    out = tmp_path / "argv.json"
    proc = run_script(GPU_HOST, ["--no-install", "--venv", str(venv), "--gin_file", GIN_FILE],
                      env={"ARGV_OUT": str(out), "JAX_PLATFORMS": "cpu"}, check=False)
    assert proc.returncode != 0
    assert "no GPU visible to JAX" in proc.stderr
    assert not out.exists()


def test_paper_gin_files_cover_the_17_tasks():
    from tasks.specs import PAPER_TASKS

    exp = ROOT / "gin_configs" / "experiments" / "t5_xxl"
    per_task = {p.stem for p in exp.glob("*.gin")} - {"t5_xxl_prompt_tune"}
    assert per_task == set(PAPER_TASKS)


@pytest.mark.parametrize("task, mesh, expect", [
    ("sst2", "v3_8", (1, 8, 256, 16)),
    ("multi_news", "v5e_16", (4, 4, 1024, 256)),
    ("nq_open", "v4_8", (1, 4, 64, 32)),
])
def test_paper_gin_files_parse_with_the_trainer(task, mesh, expect):
    if not (ROOT / "gin_configs" / "runs" / "prompt_tune.gin").exists():
        pytest.skip("gin_configs/runs/prompt_tune.gin (the trainer's) is not there yet")
    import gin

    from ptransfer.cli import gin_setup
    from ptransfer.cli.train import TRAIN_REQUIRED

    gin_setup.parse_gin([f"experiments/t5_xxl/{task}.gin", f"meshes/{mesh}.gin"],
                        ["MODEL_DIR='gs://bucket/run'"], required=TRAIN_REQUIRED)
    assert gin_setup.macro_value("TASK") == task
    assert gin_setup.macro_value("PROMPT_LENGTH") == 100
    assert gin_setup.macro_value("BACKBONE").startswith("t5x:t5_lm_adapt_xxl:gs://")
    got = tuple(gin_setup.macro_value(k)
                for k in ("MESH_DATA", "MESH_MODEL", "INPUT_LENGTH", "TARGET_LENGTH"))
    assert got == expect
    assert gin.query_parameter("ptransfer.TrainConfig.backbone_dtype") == "bfloat16"


def test_tpu_train_command_drives_the_real_cli(fake_worker, tmp_path):
    """The workers' command, run by bash against the real `ptransfer` (config only)."""
    exe = fake_worker / "ptransfer-venv" / "bin" / "ptransfer"
    exe.unlink()
    exe.symlink_to(Path(sys.executable).parent / "ptransfer")
    cmds = plan(TPU_POD, ["--zone", "z", "--name", "pt-xxl", "--bucket", "gs://bk/runs",
                          "--gin_file", "experiments/t5_xxl/squad.gin",
                          "--gin_file", "meshes/v5e_16.gin", "--gin", "TRAIN_STEPS=7",
                          "--", "--print_config"])
    train = remote_command(cmds[-3])
    proc = subprocess.run(["bash", "-c", train], env={**os.environ, "HOME": str(fake_worker)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    config = proc.stdout
    for line in ("MODEL_DIR = 'gs://bk/runs/pt-xxl/model'", "TASK = 'squad'",
                 "TRAIN_STEPS = 7", "MESH_DATA = 4", "MESH_MODEL = 4", "INPUT_LENGTH = 512"):
        assert line in config, line
