#!/usr/bin/env bash
# Deletes the TPU VM (every worker). The gs:// workdir and data stay; billing for the TPU stops.
#
#   launch/delete.sh [--yes] [--name NAME] [--zone ZONE] [--project PROJECT] [--dry-run]
#
# --yes  skip gcloud's confirmation prompt.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIRM=()
while (($#)); do
  case "$1" in
    --yes) CONFIRM=(--quiet) SHIFT_BY=1 ;;
    *) parse_common_flag "$@" ;;
  esac
  shift "$SHIFT_BY"
done

location_flags
run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${LOCATION_FLAGS[@]}" "${CONFIRM[@]}"
