#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice.
#
#   launch/create.sh [--name NAME] [--zone ZONE] [--project PROJECT] [--accelerator TYPE]
#                    [--version RUNTIME] [--spot | --preemptible] [--dry-run]
#
# --accelerator  v4-8 (default), v4-32, v5litepod-8, v6e-8, ... (a "-8" type is one host; larger types
#                are pod slices with one worker per 4 or 8 chips).
# --version      TPU software version; default picked from the accelerator: v4 and older
#                tpu-ubuntu2204-base, v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e.
# --spot         Spot capacity: much cheaper, may be reclaimed at any time (training resumes from the
#                gs:// workdir after you recreate the VM and start it again).
# --preemptible  The older preemptible model (also cheap, at most 24 h).
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ACCELERATOR="v4-8"
VERSION=""
CAPACITY=()
while (($#)); do
  case "$1" in
    --accelerator | --accelerator=*) flag_value "$@" && ACCELERATOR="$FLAG_VALUE" ;;
    --version | --version=*) flag_value "$@" && VERSION="$FLAG_VALUE" ;;
    --spot) CAPACITY=(--spot) SHIFT_BY=1 ;;
    --preemptible) CAPACITY=(--preemptible) SHIFT_BY=1 ;;
    *) parse_common_flag "$@" ;;
  esac
  shift "$SHIFT_BY"
done

if [[ -z "$VERSION" ]]; then
  case "$ACCELERATOR" in
    v2-* | v3-* | v4-*) VERSION="tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) VERSION="v2-alpha-tpuv5-lite" ;;
    v5p-*) VERSION="v2-alpha-tpuv5" ;;
    v6e-*) VERSION="v2-alpha-tpuv6e" ;;
    *) die "no default --version for --accelerator=$ACCELERATOR; pass one (gcloud compute tpus tpu-vm versions list --zone=$ZONE)" ;;
  esac
fi

location_flags
run gcloud compute tpus tpu-vm create "$TPU_NAME" "${LOCATION_FLAGS[@]}" "--accelerator-type=$ACCELERATOR" \
  "--version=$VERSION" "${CAPACITY[@]}"
