#!/usr/bin/env bash
# Lists a run's checkpoints in its gs:// workdir, or fetches the run (checkpoints, metrics, pictures).
#
#   launch/checkpoints.sh list  --workdir gs://BUCKET/RUN [--dry-run]
#   launch/checkpoints.sh fetch --workdir gs://BUCKET/RUN [--dest runs/NAME] [--dry-run]
#
# fetch mirrors the whole workdir with `gcloud storage rsync` (only new files move on a second call), so
# the local copy resumes or evaluates like the original:
#   python -m unet_jax.train --config configs/pets.py --workdir runs/NAME
# Needs no TPU: the bucket outlives the VM.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ACTION=""
WORKDIR=""
DEST=""
while (($#)); do
  case "$1" in
    list | fetch) ACTION="$1" SHIFT_BY=1 ;;
    --workdir | --workdir=*) flag_value "$@" && WORKDIR="$FLAG_VALUE" ;;
    --dest | --dest=*) flag_value "$@" && DEST="$FLAG_VALUE" ;;
    *) parse_common_flag "$@" ;;
  esac
  shift "$SHIFT_BY"
done

[[ -n "$ACTION" ]] || die "say what to do: list or fetch (see --help)"
[[ -n "$WORKDIR" ]] || die "--workdir gs://BUCKET/RUN is required (see --help)"
require_gs_path --workdir "$WORKDIR"
WORKDIR="${WORKDIR%/}"
case "$ACTION" in
  list) run gcloud storage ls --long "$WORKDIR/checkpoints/" ;;
  fetch)
    DEST="${DEST:-runs/$(basename "$WORKDIR")}"
    run mkdir -p "$DEST"
    run gcloud storage rsync --recursive "$WORKDIR" "$DEST"
    ;;
esac
