#!/usr/bin/env bash
# The trainer's programs compiled for TPU slices on this machine (no TPU needed; pip install -e ".[tpu]"): one JSON
# line per program and per max-batch search, as `python -m unet_jax.aot` prints them, for the tables in
# bench/README.md. Minutes per slice on 2 cores; --max_batch adds several compiles per dtype.
#   bash bench/tpu_slices.sh > tpu_slices.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
echo "{\"date\": \"$(date -u +%F)\", \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"cpus\": $(nproc)}"
for topology in v5e-8 v4-32; do
  python -m unet_jax.aot --config configs/pets.py --topology "$topology" --max_batch
done
for topology in v6e-8 v5p-8; do
  python -m unet_jax.aot --config configs/pets.py --topology "$topology"
done
python -m unet_jax.aot --config configs/pets_tpu.py --topology v5e-8
python -m unet_jax.aot --config configs/pets_tpu.py:chips=16 --topology v4-32
