#!/usr/bin/env bash
# Installs this package, with JAX for TPU, into a virtual environment on every worker of the TPU VM.
#
#   launch/install.sh [--name NAME] [--zone ZONE] [--project PROJECT] [--python VERSION]
#                     [--git-url URL [--git-ref REF]] [--dry-run]
#
# By default it ships this checkout's committed HEAD (git archive; uncommitted edits are not included)
# to every worker with scp. With --git-url the workers clone the repository themselves (REF: a branch or
# tag, default main). Either way the code lands in ~/unet_jax, and uv creates ~/unet_jax/.venv on Python
# VERSION (3.12 or newer, default 3.12), downloading a standalone CPython when the image has none: TPU VM
# images ship Python 3.10, which this package does not support. The package goes into that venv in
# editable mode with its tpu extra, so one resolve picks jax and the libtpu that matches it; the other
# scripts run the venv's python.
# Run it again after changing the code: it rebuilds ~/unet_jax and the venv (quick, from uv's cache).
# The trainer is not restarted.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GIT_URL=""
GIT_REF="main"
PYTHON_VERSION="3.12"
while (($#)); do
  case "$1" in
    --git-url | --git-url=*) flag_value "$@" && GIT_URL="$FLAG_VALUE" ;;
    --git-ref | --git-ref=*) flag_value "$@" && GIT_REF="$FLAG_VALUE" ;;
    --python | --python=*) flag_value "$@" && PYTHON_VERSION="$FLAG_VALUE" ;;
    *) parse_common_flag "$@" ;;
  esac
  shift "$SHIFT_BY"
done

# 3.12 and newer resolve the newest jax and flax the package allows; 3.11 would fall back to an older jax.
if ! [[ "$PYTHON_VERSION" =~ ^3\.([1-9][0-9]*)(\.[0-9]+)?$ ]] || ((BASH_REMATCH[1] < 12)); then
  die "--python must be a Python version 3.12 or newer, e.g. 3.12 or 3.13 (got '$PYTHON_VERSION')"
fi

ARCHIVE="unet_jax-src.tar.gz"
if [[ -n "$GIT_URL" ]]; then
  fetch_source="rm -rf $REMOTE_SRC_DIR && git clone --depth=1 --branch=$(quote "$GIT_REF") $(quote "$GIT_URL") $REMOTE_SRC_DIR"
else
  local_archive="${TMPDIR:-/tmp}/$ARCHIVE"
  run git -C "$REPO_ROOT" archive --format=tar.gz "--output=$local_archive" HEAD
  location_flags
  run gcloud compute tpus tpu-vm scp "$local_archive" "$TPU_NAME:$ARCHIVE" "${LOCATION_FLAGS[@]}" --worker=all
  fetch_source="rm -rf $REMOTE_SRC_DIR && mkdir -p $REMOTE_SRC_DIR && tar -xzf $ARCHIVE -C $REMOTE_SRC_DIR"
fi

# uv from the user site, run as `python3 -m uv` (~/.local/bin need not be on the ssh session's PATH), and
# upgraded each time so that it knows the newest CPython builds. PIP_BREAK_SYSTEM_PACKAGES lets this one
# --user install through where the image marks its Python externally managed; older pips ignore it.
check='import sys, flax, jax, unet_jax; '
check+='print("Python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__)'
on_workers all "set -e; $fetch_source \
&& PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --user --upgrade --no-warn-script-location uv \
&& python3 -m uv venv -q --python $(quote "$PYTHON_VERSION") $REMOTE_VENV \
&& python3 -m uv pip install -q --python $REMOTE_PYTHON -e $(quote "./${REMOTE_SRC_DIR}[tpu]") \
&& $REMOTE_PYTHON -c $(quote "$check")"
