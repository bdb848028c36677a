# shellcheck shell=bash
# Variables set here are read by the scripts that source this file:
# shellcheck disable=SC2034

# Shared by launch/*.sh (sourced, never run): common flags, --dry-run, quoting, remote execution.
#
# Common flags (every script): --name TPU_NAME  --zone ZONE  --project PROJECT  --dry-run  --help
# Defaults come from the environment so a user sets them once: TPU_NAME, TPU_ZONE, TPU_PROJECT.
# Values may be given as `--flag value` or `--flag=value`.

TPU_NAME="${TPU_NAME:-unet-jax}"
ZONE="${TPU_ZONE:-us-central2-b}"
PROJECT="${TPU_PROJECT:-}"
DRY_RUN=0
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# On every worker (paths relative to the ssh user's home directory).
REMOTE_SRC_DIR="unet_jax"
REMOTE_LOG="unet_jax_train.log"
# The workers' Python: the virtual environment install.sh creates in the source tree (the images' own python3
# is too old for this package). Written for remote command lines: $HOME expands on the worker, so the path
# holds from any directory (train.sh runs it from inside REMOTE_SRC_DIR).
REMOTE_VENV="\$HOME/$REMOTE_SRC_DIR/.venv"
REMOTE_PYTHON="$REMOTE_VENV/bin/python"

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# The script's own header comment is its --help text.
usage() {
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}

# Words as one shell command line that pastes back exactly: safe words bare, the rest single-quoted.
quote() {
  local out=() word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  echo "${out[*]}"
}

# Runs a command, or with --dry-run only prints it (to stdout, one command per line).
run() {
  if ((DRY_RUN)); then
    quote "$@"
  else
    echo "+ $(quote "$@")" >&2
    "$@"
  fi
}

# Reads the value of the value-taking flag in "$@" ("--flag value" or "--flag=value") into FLAG_VALUE,
# and how many words it used into SHIFT_BY.
flag_value() {
  if [[ "$1" == *=* ]]; then
    FLAG_VALUE="${1#*=}"
    SHIFT_BY=1
  else
    (($# >= 2)) || die "$1 needs a value (see --help)"
    FLAG_VALUE="$2"
    SHIFT_BY=2
  fi
}

# Consumes one common flag from "$@" (setting SHIFT_BY), or dies naming the unknown flag.
parse_common_flag() {
  case "$1" in
    --name | --name=*) flag_value "$@" && TPU_NAME="$FLAG_VALUE" ;;
    --zone | --zone=*) flag_value "$@" && ZONE="$FLAG_VALUE" ;;
    --project | --project=*) flag_value "$@" && PROJECT="$FLAG_VALUE" ;;
    --dry-run) DRY_RUN=1 SHIFT_BY=1 ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
}

# gcloud's location flags for the TPU: --zone, and --project when one is given.
location_flags() {
  LOCATION_FLAGS=("--zone=$ZONE")
  if [[ -n "$PROJECT" ]]; then
    LOCATION_FLAGS+=("--project=$PROJECT")
  fi
}

# Runs a shell command on one worker ("0") or on all of them at once ("all").
on_workers() {
  local worker="$1" command="$2"
  location_flags
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION_FLAGS[@]}" "--worker=$worker" --command "$command"
}

require_gs_path() {
  local flag="$1" value="$2"
  [[ "$value" == gs://* ]] ||
    die "$flag must be a gs:// path (got '$value'): the workers of a pod slice share no disk, and the" \
      "bucket outlives the VM. Create one with: gcloud storage buckets create gs://BUCKET --location=REGION"
}
