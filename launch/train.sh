#!/usr/bin/env bash
# Starts training on every worker of the TPU VM at once, detached from ssh, logging to ~/unet_jax_train.log.
#
#   launch/train.sh --workdir gs://BUCKET/RUN [--config configs/pets.py] [--data-dir gs://BUCKET/tfds]
#                   [--name NAME] [--zone ZONE] [--project PROJECT] [--dry-run] [-- TRAINER_FLAGS...]
#
# Every worker runs the same command, with the python of the venv launch/install.sh made; JAX finds the
# other workers through the TPU metadata (unet_jax.distributed.initialize), and each feeds its own shard of
# every batch. The workdir must be a gs:// path all workers share: Orbax writes one checkpoint from all of
# them there, and restarting with the same workdir resumes from the latest checkpoint (after a Spot
# preemption, recreate, install, rerun).
# Flags after `--` go to the trainer, e.g. -- --config.batch_size=128 --config.num_epochs=40
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIG="configs/pets.py"
WORKDIR=""
DATA_DIR=""
TRAINER_FLAGS=()
while (($#)); do
  case "$1" in
    --config | --config=*) flag_value "$@" && CONFIG="$FLAG_VALUE" ;;
    --workdir | --workdir=*) flag_value "$@" && WORKDIR="$FLAG_VALUE" ;;
    --data-dir | --data-dir=*) flag_value "$@" && DATA_DIR="$FLAG_VALUE" ;;
    --)
      shift
      TRAINER_FLAGS=("$@")
      break
      ;;
    *) parse_common_flag "$@" ;;
  esac
  shift "$SHIFT_BY"
done

[[ -n "$WORKDIR" ]] || die "--workdir gs://BUCKET/RUN is required (see --help)"
require_gs_path --workdir "$WORKDIR"
train=(-m unet_jax.train "--config=$CONFIG" "--workdir=$WORKDIR")
if [[ -n "$DATA_DIR" ]]; then
  require_gs_path --data-dir "$DATA_DIR"
  train+=("--config.data.data_dir=$DATA_DIR")
fi
train+=("${TRAINER_FLAGS[@]}")

# setsid + nohup + all three streams redirected: the trainer outlives the ssh session that started it.
on_workers all "cd $REMOTE_SRC_DIR && setsid nohup $REMOTE_PYTHON $(quote "${train[@]}") > ../$REMOTE_LOG 2>&1 < /dev/null &"
((DRY_RUN)) || echo "Started on all workers. Follow worker 0 with: launch/logs.sh --name $TPU_NAME --zone $ZONE" >&2
