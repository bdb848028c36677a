#!/usr/bin/env bash
# Installs this package, with JAX for TPU, on every worker of the TPU VM.
#
#   launch/install.sh [--name NAME] [--zone ZONE] [--project PROJECT] [--git-url URL [--git-ref REF]]
#                     [--dry-run]
#
# By default it ships this checkout's committed HEAD (git archive; uncommitted edits are not included)
# to every worker with scp. With --git-url the workers clone the repository themselves (REF: a branch or
# tag, default main). Either way the code lands in ~/unet_jax and is pip-installed in editable mode, then
# jax[tpu] is installed at exactly the jax version the package resolved, so libtpu matches it.
# Run it again after changing the code; the trainer is not restarted.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GIT_URL=""
GIT_REF="main"
while (($#)); do
  case "$1" in
    --git-url | --git-url=*) flag_value "$@" && GIT_URL="$FLAG_VALUE" ;;
    --git-ref | --git-ref=*) flag_value "$@" && GIT_REF="$FLAG_VALUE" ;;
    *) parse_common_flag "$@" ;;
  esac
  shift "$SHIFT_BY"
done

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

# Plain pip into the user site: TPU VM images ship python3 and pip but not always python3-venv.
# shellcheck disable=SC2016  # expands on the worker, after the package has pulled in its jax.
jax_version='$(python3 -c "import jax; print(jax.__version__)")'
on_workers all "set -e; $fetch_source && python3 -m pip install -q --upgrade pip \
&& python3 -m pip install -q -e ./$REMOTE_SRC_DIR && python3 -m pip install -q \"jax[tpu]==$jax_version\" \
&& python3 -c \"import jax, unet_jax; print(jax.__version__)\""
