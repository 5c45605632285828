# shellcheck shell=bash
# Shared helpers for the launch scripts (sourced, never run): shell quoting,
# the dry-run aware command runner, and the `ptransfer train` argument list
# built from --gin_file / --gin / --env flags.
#
# Every command a launcher runs goes through `run` (or `show` for commands
# whose exit status is inspected), so `--dry-run` prints exactly what would
# run, one command per line, quoted so that `shlex.split` / `bash` read it
# back to the same words.

if (( BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4) )); then
  echo "${0##*/}: needs bash >= 4.4 (this is $BASH_VERSION); on macOS: brew install bash, then run it with that bash." >&2
  exit 2
fi

DRY_RUN=${DRY_RUN:-0}
EXTRA_ARGS=()

# quote WORD: WORD quoted for a POSIX shell, the same way Python's shlex.quote does.
quote() {
  local s=$1 sq="'\"'\"'"
  if [[ -z $s ]]; then
    printf "''"
  elif [[ $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/$sq}"
  fi
}

# join_quoted WORD...: the words quoted and joined by single spaces.
join_quoted() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(quote "$w")"
  done
  printf '%s' "$out"
}

# show CMD...: prints the command (stdout under --dry-run, "+ cmd" on stderr otherwise).
show() {
  if (( DRY_RUN )); then
    printf '%s\n' "$(join_quoted "$@")"
  else
    printf '+ %s\n' "$(join_quoted "$@")" >&2
  fi
}

# run CMD...: prints the command, then runs it unless --dry-run.
run() {
  show "$@"
  (( DRY_RUN )) && return 0
  "$@"
}

# note TEXT: a comment line (stdout under --dry-run so the plan reads in order).
note() {
  if (( DRY_RUN )); then printf '# %s\n' "$*"; else printf '%s: %s\n' "$PROG" "$*" >&2; fi
}

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

# need_value FLAG NARGS: dies unless a flag that takes a value got one.
need_value() {
  (( $2 >= 2 )) || die "$1 needs a value (see --help)."
}

# Train arguments, filled by add_gin_file / add_gin / add_env.
GIN_FILES=()
GIN_BINDINGS=()   # MACRO=value
ENV_VARS=()       # KEY=value

add_gin_file() {
  [[ -n $1 ]] || die "--gin_file needs a file name, e.g. --gin_file=experiments/t5_xxl/sst2.gin."
  GIN_FILES+=("$1")
}

# add_gin MACRO=VALUE: VALUE is a gin literal, e.g. TASK="'sst2'" or BATCH_SIZE=32.
add_gin() {
  local b=$1
  [[ $b =~ ^[A-Za-z_][A-Za-z0-9_.]*= ]] ||
    die "--gin expects NAME=VALUE with a gin literal value, e.g. --gin TRAIN_STEPS=1000 or --gin \"MODEL_DIR='gs://bucket/run'\"; got $(quote "$b")."
  [[ $b != *$'\n'* ]] || die "--gin value for ${b%%=*} contains a newline; write it on one line."
  GIN_BINDINGS+=("$b")
}

add_env() {
  local e=$1
  [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env expects KEY=VALUE, e.g. --env TFDS_DATA_DIR=gs://bucket/tfds; got $(quote "$e")."
  [[ $e != *$'\n'* ]] || die "--env value for ${e%%=*} contains a newline."
  ENV_VARS+=("$e")
}

has_gin() {
  local b
  for b in "${GIN_BINDINGS[@]}"; do [[ ${b%%=*} == "$1" ]] && return 0; done
  return 1
}

# train_args: fills TRAIN_ARGS with `train --gin_file=... --gin.NAME=VALUE ... EXTRA...`.
train_args() {
  TRAIN_ARGS=(train)
  local f b
  for f in "${GIN_FILES[@]}"; do TRAIN_ARGS+=("--gin_file=$f"); done
  for b in "${GIN_BINDINGS[@]}"; do TRAIN_ARGS+=("--gin.$b"); done
  TRAIN_ARGS+=("${EXTRA_ARGS[@]}")
}

# check_gin_files SOURCE_DIR: each gin file must exist (as given, or under gin_configs/).
check_gin_files() {
  local src=$1 f
  for f in "${GIN_FILES[@]}"; do
    [[ -f $f || -f $src/gin_configs/$f || -f $src/$f ]] ||
      die "gin file $(quote "$f") not found in $src/gin_configs/ or $src/; list them with: ls $src/gin_configs/experiments"
  done
}
