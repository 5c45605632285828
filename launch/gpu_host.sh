#!/usr/bin/env bash
# Runs `ptransfer train` on this multi-GPU host: a venv with jax[cuda12], XLA
# settings for GPUs, and one process whose mesh spans all local GPUs.
set -euo pipefail

PROG=gpu_host.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/lib.sh
source "$HERE/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/gpu_host.sh --gin_file FILE [options] [-- EXTRA_TRAIN_ARGS...]

Installs ptransfer with jax[cuda12] into a venv (unless --no-install) and runs
`ptransfer train` as one process over all local GPUs (the trainer's mesh covers
every visible device; choose its shape with a mesh gin file or --gin).

  --gin_file FILE        repeatable; relative to gin_configs/
  --gin NAME=VALUE       repeatable; passed as --gin.NAME=VALUE (VALUE is a gin literal)
  --env KEY=VALUE        repeatable; extra environment for the run
  --source DIR           ptransfer checkout (default: this repo)
  --venv DIR             virtual environment (default: ~/.venvs/ptransfer-gpu)
  --python PYTHON        interpreter that creates the venv (default python3.11)
  --cuda EXTRA           jax extra to install (default cuda12)
  --gpus LIST            CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 (default: all)
  --mem_fraction F       XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.90)
  --xla_flags FLAGS      XLA_FLAGS (default --xla_gpu_enable_latency_hiding_scheduler=true)
  --no-install           use the venv as it is
  --dry-run              print every command (shell-quoted, one per line) and run none
  -h, --help             this help
EOF
}

SOURCE=$(cd "$HERE/.." && pwd)
VENV_DIR=""
PYTHON_BIN=python3.11
CUDA=cuda12
GPUS=""
MEM_FRACTION=0.90
XLA=--xla_gpu_enable_latency_hiding_scheduler=true
INSTALL=1

while (( $# )); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --no-install) INSTALL=0 ;;
    --) shift; EXTRA_ARGS=("$@"); break ;;
    --gin.*=*) add_gin "${1#--gin.}" ;;
    --*=*)
      flag=${1%%=*} value=${1#*=}
      shift
      set -- "$flag" "$value" "$@"
      continue ;;
    --source) need_value "$1" $#; SOURCE=$2; shift ;;
    --venv) need_value "$1" $#; VENV_DIR=$2; shift ;;
    --python) need_value "$1" $#; PYTHON_BIN=$2; shift ;;
    --cuda) need_value "$1" $#; CUDA=$2; shift ;;
    --gpus) need_value "$1" $#; GPUS=$2; shift ;;
    --mem_fraction) need_value "$1" $#; MEM_FRACTION=$2; shift ;;
    --xla_flags) need_value "$1" $#; XLA=$2; shift ;;
    --gin_file) need_value "$1" $#; add_gin_file "$2"; shift ;;
    --gin) need_value "$1" $#; add_gin "$2"; shift ;;
    --env) need_value "$1" $#; add_env "$2"; shift ;;
    *) die "unknown argument $(quote "$1"); see --help." ;;
  esac
  shift
done

[[ -f $SOURCE/pyproject.toml ]] || die "--source $(quote "$SOURCE") is not a ptransfer checkout (no pyproject.toml)."
SOURCE=$(cd "$SOURCE" && pwd)
(( ${#GIN_FILES[@]} )) || die "no --gin_file given; e.g. --gin_file experiments/t5_xxl/sst2.gin (see gin_configs/)."
check_gin_files "$SOURCE"
[[ $CUDA =~ ^cuda[0-9]+(-local)?$ ]] || die "--cuda $(quote "$CUDA") is not a jax extra such as cuda12."
[[ -z $GPUS || $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus expects a list like 0,1,2,3; got $(quote "$GPUS")."
[[ $MEM_FRACTION =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "--mem_fraction expects a number in (0, 1], e.g. 0.9."
VENV_DIR=${VENV_DIR:-$HOME/.venvs/ptransfer-gpu}

if (( INSTALL )); then
  command -v "$PYTHON_BIN" >/dev/null || (( DRY_RUN )) ||
    die "$PYTHON_BIN not found; install Python 3.11 or pass --python."
  run "$PYTHON_BIN" -m venv "$VENV_DIR"
  run "$VENV_DIR/bin/pip" install -q -U pip
  run "$VENV_DIR/bin/pip" install -q -e "$SOURCE" "jax[$CUDA]"
elif (( ! DRY_RUN )) && [[ ! -x $VENV_DIR/bin/ptransfer ]]; then
  die "--no-install but $VENV_DIR has no ptransfer; drop --no-install or pass --venv."
fi

# JAX owns the GPUs: TF (input pipelines only) must not reserve their memory.
RUN_ENV=(XLA_FLAGS="$XLA" XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION"
         TF_FORCE_GPU_ALLOW_GROWTH=true TF_CPP_MIN_LOG_LEVEL=2)
[[ -n $GPUS ]] && RUN_ENV+=(CUDA_VISIBLE_DEVICES="$GPUS")
RUN_ENV+=("${ENV_VARS[@]}")

run env "${RUN_ENV[@]}" "$VENV_DIR/bin/python" -c \
  'import jax; d = jax.devices(); print(len(d), "devices:", d); assert d[0].platform == "gpu", "no GPU visible to JAX"'
train_args
cd "$SOURCE"
run env "${RUN_ENV[@]}" "$VENV_DIR/bin/ptransfer" "${TRAIN_ARGS[@]}"
