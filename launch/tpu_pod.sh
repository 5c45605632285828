#!/usr/bin/env bash
# Runs `ptransfer train` on a Cloud TPU VM slice: create the slice, install
# ptransfer on every worker, run the same command on every worker, stream the
# logs, and delete the slice at the end and on any failure or interrupt.
set -euo pipefail

PROG=tpu_pod.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=launch/lib.sh
source "$HERE/lib.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --zone ZONE --gin_file FILE [options] [-- EXTRA_TRAIN_ARGS...]

Creates a Cloud TPU VM slice, installs ptransfer on every worker, runs the same
`ptransfer train` on every worker (gcloud ... --worker=all), streams the logs,
and deletes the slice when training ends, fails or is interrupted.

Slice:
  --name NAME            TPU VM name (default: ptransfer-$USER); lowercase, digits, '-'
  --zone ZONE            e.g. us-central2-b (v4), europe-west4-a (v3/v5e)   [required]
  --project PROJECT      GCP project (default: gcloud's configured project)
  --accelerator TYPE     v3-8, v4-8, v4-16, v5litepod-16 (alias v5e-16), v6e-8, ... (default v4-8)
  --version VERSION      TPU VM runtime (default by generation: tpu-ubuntu2204-base for
                         v2/v3/v4, v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p,
                         v2-alpha-tpuv6e for v6e)
  --spot                 create a Spot slice (cheaper, may be preempted)
  --reuse                run on an existing slice NAME instead of creating one
  --keep                 do not delete the slice at the end (prints the delete command)

Code:
  --source DIR           local ptransfer checkout to copy to the workers (default: this repo)
  --repo URL             git clone URL instead of copying --source
  --ref REF              branch, tag or commit for --repo (default: the default branch)
  --python PYTHON        interpreter for the workers' venv (default python3.11; installed
                         with apt if missing)

Training:
  --gin_file FILE        repeatable; relative to gin_configs/ (e.g. experiments/t5_xxl/sst2.gin)
  --gin NAME=VALUE       repeatable; a gin binding passed as --gin.NAME=VALUE; VALUE is a gin
                         literal, so strings are quoted: --gin "MODEL_DIR='gs://b/run1'"
  --env KEY=VALUE        repeatable; exported on every worker (e.g. TFDS_DATA_DIR=gs://b/tfds)
  --bucket gs://B[/P]    where runs live: MODEL_DIR defaults to gs://B[/P]/NAME/model and the
                         workers' logs are copied to gs://B[/P]/NAME/logs/ before deletion
  -- ARGS...             extra arguments appended to `ptransfer train`

Other:
  --dry-run              print every command (shell-quoted, one per line) and run none
  -h, --help             this help

Example:
  launch/tpu_pod.sh --zone us-central2-b --project my-proj --accelerator v4-8 \
    --gin_file experiments/t5_xxl/sst2.gin --gin_file meshes/v4_8.gin \
    --bucket gs://my-bucket/ptransfer --dry-run
EOF
}

NAME_USER=$(printf '%s' "${USER:-user}" | tr 'A-Z_.' 'a-z--')
NAME="ptransfer-${NAME_USER:0:40}"
ZONE=""
PROJECT=""
ACCELERATOR="v4-8"
VERSION=""
SPOT=0
REUSE=0
KEEP=0
SOURCE=$(cd "$HERE/.." && pwd)
REPO=""
REF=""
PYTHON_BIN="python3.11"
BUCKET=""

while (( $# )); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --reuse) REUSE=1 ;;
    --keep) KEEP=1 ;;
    --) shift; EXTRA_ARGS=("$@"); break ;;
    --gin.*=*) b=${1#--gin.}; add_gin "$b" ;;
    --*=*)
      flag=${1%%=*} value=${1#*=}
      shift
      set -- "$flag" "$value" "$@"
      continue ;;
    --name) need_value "$1" $#; NAME=$2; shift ;;
    --zone) need_value "$1" $#; ZONE=$2; shift ;;
    --project) need_value "$1" $#; PROJECT=$2; shift ;;
    --accelerator) need_value "$1" $#; ACCELERATOR=$2; shift ;;
    --version) need_value "$1" $#; VERSION=$2; shift ;;
    --source) need_value "$1" $#; SOURCE=$2; shift ;;
    --repo) need_value "$1" $#; REPO=$2; shift ;;
    --ref) need_value "$1" $#; REF=$2; shift ;;
    --python) need_value "$1" $#; PYTHON_BIN=$2; shift ;;
    --bucket) need_value "$1" $#; BUCKET=${2%/}; shift ;;
    --gin_file) need_value "$1" $#; add_gin_file "$2"; shift ;;
    --gin) need_value "$1" $#; add_gin "$2"; shift ;;
    --env) need_value "$1" $#; add_env "$2"; shift ;;
    *) die "unknown argument $(quote "$1"); see --help." ;;
  esac
  shift
done

# ---- validate before anything costs money ----------------------------------
[[ -n $ZONE ]] || die "--zone is required (e.g. --zone us-central2-b for v4, europe-west4-a for v3)."
[[ $NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  die "--name $(quote "$NAME") is not a valid TPU name: use lowercase letters, digits and '-', starting with a letter."
(( ${#GIN_FILES[@]} )) || die "no --gin_file given; e.g. --gin_file experiments/t5_xxl/sst2.gin (see gin_configs/)."
[[ $ACCELERATOR =~ ^v5e-([0-9]+)$ ]] && ACCELERATOR="v5litepod-${BASH_REMATCH[1]}"
if [[ -z $VERSION ]]; then
  case $ACCELERATOR in
    v2-*|v3-*|v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "unknown --accelerator $(quote "$ACCELERATOR"); use e.g. v3-8, v4-8, v5litepod-16, v6e-8 (or pass --version)." ;;
  esac
fi
if [[ -n $BUCKET ]]; then
  [[ $BUCKET =~ ^gs://[a-z0-9][-a-z0-9_.]*[a-z0-9](/.*)?$ ]] ||
    die "--bucket must be a gs:// path such as gs://my-bucket/ptransfer; got $(quote "$BUCKET")."
  RUN_ROOT="$BUCKET/$NAME"
  has_gin MODEL_DIR || add_gin "MODEL_DIR='$RUN_ROOT/model'"
fi
[[ $PYTHON_BIN =~ ^[A-Za-z0-9._/-]+$ ]] || die "--python $(quote "$PYTHON_BIN") is not an interpreter name such as python3.11."
if [[ -n $REPO ]]; then
  [[ -z $REF || $REF =~ ^[A-Za-z0-9._/-]+$ ]] || die "--ref $(quote "$REF") is not a branch, tag or commit name."
else
  [[ -f $SOURCE/pyproject.toml ]] || die "--source $(quote "$SOURCE") is not a ptransfer checkout (no pyproject.toml)."
  check_gin_files "$SOURCE"
fi

PROJECT_FLAG=()
[[ -n $PROJECT ]] && PROJECT_FLAG=(--project="$PROJECT")
SCOPE=(--zone="$ZONE" "${PROJECT_FLAG[@]}")
TPU=(gcloud compute tpus tpu-vm)
DELETE_CMD=("${TPU[@]}" delete "$NAME" "${SCOPE[@]}" --quiet)

# ---- remote scripts (fixed text; user values are quoted with `quote`) --------
# The tildes are expanded by the workers' shells, not here.
# shellcheck disable=SC2088
REMOTE_DIR='~/ptransfer'
# shellcheck disable=SC2088
VENV='~/ptransfer-venv'
TARBALL_REMOTE=ptransfer-src.tar.gz
APT="sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq"
if [[ -n $REPO ]]; then
  FETCH="rm -rf $REMOTE_DIR && git clone -q $(quote "$REPO") $REMOTE_DIR"
  [[ -n $REF ]] && FETCH+=" && git -C $REMOTE_DIR checkout -q $(quote "$REF")"
else
  FETCH="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf ~/$TARBALL_REMOTE -C $REMOTE_DIR"
fi
PY=$(quote "$PYTHON_BIN")
SETUP="set -euo pipefail; $FETCH"
SETUP+=" && { command -v $PY >/dev/null || { $APT update && $APT install -y $PY $PY-venv; }; }"
SETUP+=" && $PY -m venv $VENV && $VENV/bin/pip install -q -U pip"
SETUP+=" && $VENV/bin/pip install -q -e $REMOTE_DIR 'jax[tpu]'"
SETUP+=" && $VENV/bin/python -c 'import jax, ptransfer; print(\"jax\", jax.__version__)'"

# PTRANSFER_DISTRIBUTED=1: the trainer calls jax.distributed.initialize() (no-arg
# form, the TPU cluster is auto-detected) before touching any device.
train_args
EXPORTS="export PTRANSFER_DISTRIBUTED=1"
for e in "${ENV_VARS[@]}"; do EXPORTS+=" $(quote "$e")"; done
TRAIN="set -o pipefail; cd $REMOTE_DIR && $EXPORTS && $VENV/bin/ptransfer $(join_quoted "${TRAIN_ARGS[@]}") 2>&1 | tee ~/ptransfer-train.log"

# ---- cleanup: runs on exit, failure and interrupt -------------------------------
ARMED=0          # the slice is ours to delete
TRAIN_STARTED=0
TARBALL_LOCAL=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if (( TRAIN_STARTED )) && [[ -n $BUCKET ]]; then
    run "${TPU[@]}" ssh "$NAME" "${SCOPE[@]}" --worker=all \
      --command="gcloud storage cp ~/ptransfer-train.log $(quote "$RUN_ROOT/logs")/\$(hostname).log" ||
      note "could not copy the workers' logs to $RUN_ROOT/logs"
  fi
  [[ -n $TARBALL_LOCAL ]] && rm -f "$TARBALL_LOCAL"
  if (( ARMED )); then
    if (( KEEP )); then
      note "--keep: slice $NAME is left running; delete it with: $(join_quoted "${DELETE_CMD[@]}")"
    else
      (( rc )) && note "a step failed (exit $rc); deleting slice $NAME"
      run "${DELETE_CMD[@]}" || note "deleting $NAME failed; check with: gcloud compute tpus tpu-vm list --zone=$ZONE"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the plan -------------------------------------------------------------
note "slice $NAME: $ACCELERATOR ($VERSION) in $ZONE${PROJECT:+, project $PROJECT}"
if [[ -n $BUCKET ]]; then
  bucket_only=$(sed -E 's#^(gs://[^/]+).*#\1#' <<<"$BUCKET")
  run gcloud storage buckets describe "$bucket_only" "${PROJECT_FLAG[@]}" --format='value(name)' ||
    die "cannot read bucket $bucket_only; create it (gcloud storage buckets create $bucket_only) or fix --bucket."
fi

if (( REUSE )); then
  ARMED=1
  note "--reuse: running on the existing slice $NAME"
else
  describe=("${TPU[@]}" describe "$NAME" "${SCOPE[@]}" --format='value(state)')
  show "${describe[@]}"
  if (( ! DRY_RUN )) && "${describe[@]}" >/dev/null 2>&1; then
    die "a TPU named $NAME already exists in $ZONE; pass --reuse to run on it, or choose another --name."
  fi
  ARMED=1   # from here on a failure deletes the slice (even a half-created one)
  create=("${TPU[@]}" create "$NAME" "${SCOPE[@]}" --accelerator-type="$ACCELERATOR" --version="$VERSION")
  (( SPOT )) && create+=(--spot)
  run "${create[@]}"
fi

if [[ -z $REPO ]]; then
  TARBALL_LOCAL="${TMPDIR:-/tmp}/$NAME-src.tar.gz"
  run tar -czf "$TARBALL_LOCAL" -C "$SOURCE" --exclude=.git --exclude=.venv --exclude='.venv-*' \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache --exclude=demo_out \
    --exclude=demo_full_out --exclude=bench/results .
  run "${TPU[@]}" scp "$TARBALL_LOCAL" "$NAME:$TARBALL_REMOTE" "${SCOPE[@]}" --worker=all
fi
run "${TPU[@]}" ssh "$NAME" "${SCOPE[@]}" --worker=all --command="$SETUP"
TRAIN_STARTED=1
run "${TPU[@]}" ssh "$NAME" "${SCOPE[@]}" --worker=all --command="$TRAIN"
(( DRY_RUN )) || note "training finished on every worker of $NAME"
