#!/usr/bin/env bash
# Follows the training log of one worker (default 0, the one that writes metrics and TensorBoard).
#
#   launch/logs.sh [--worker N] [--lines N] [--name NAME] [--zone ZONE] [--project PROJECT] [--dry-run]
#
# Ctrl-C stops following; training goes on. Other workers' logs mostly matter when one of them failed.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKER=0
LINES=100
while (($#)); do
  case "$1" in
    --worker | --worker=*) flag_value "$@" && WORKER="$FLAG_VALUE" ;;
    --lines | --lines=*) flag_value "$@" && LINES="$FLAG_VALUE" ;;
    *) parse_common_flag "$@" ;;
  esac
  shift "$SHIFT_BY"
done

on_workers "$WORKER" "tail -n $(quote "$LINES") -F $REMOTE_LOG"
