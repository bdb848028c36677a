#!/usr/bin/env bash
# Downloads and prepares a tfds dataset (default oxford_iiit_pet) into a gs:// data_dir, once per bucket.
#
#   launch/prepare_data.sh --data-dir gs://BUCKET/tfds [--dataset NAME] [--here]
#                          [--name NAME] [--zone ZONE] [--project PROJECT] [--dry-run]
#
# By default it runs on worker 0 of the TPU VM, in the venv launch/install.sh made, next to the bucket;
# --here runs it on this machine instead, with the python3 on PATH (needs this package installed there and
# gcloud credentials for TensorFlow's gs:// access: gcloud auth application-default login). Training then
# reads the prepared records with --data-dir on launch/train.sh; the download (about 800 MB for
# oxford_iiit_pet) happens once.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATA_DIR=""
DATASET="oxford_iiit_pet"
HERE=0
while (($#)); do
  case "$1" in
    --data-dir | --data-dir=*) flag_value "$@" && DATA_DIR="$FLAG_VALUE" ;;
    --dataset | --dataset=*) flag_value "$@" && DATASET="$FLAG_VALUE" ;;
    --here) HERE=1 SHIFT_BY=1 ;;
    *) parse_common_flag "$@" ;;
  esac
  shift "$SHIFT_BY"
done

[[ -n "$DATA_DIR" ]] || die "--data-dir gs://BUCKET/tfds is required (see --help)"
require_gs_path --data-dir "$DATA_DIR"
prepare=(-c "import sys, tensorflow_datasets as tfds; tfds.builder(sys.argv[1], data_dir=sys.argv[2]).download_and_prepare()"
  "$DATASET" "$DATA_DIR")
if ((HERE)); then
  run python3 "${prepare[@]}"
else
  on_workers 0 "$REMOTE_PYTHON $(quote "${prepare[@]}")"
fi
