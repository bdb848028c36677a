#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU: installs the CUDA build of JAX from the package index into
# .venv-device and runs bench/device_check.py (JSON lines on stdout; under 8 minutes on an H100-class GPU).
#   bash bench/device_check.sh            # on the GPU machine, from a clone with ../shared beside it
#   bash bench/device_check.sh --dry_run  # anywhere, in the current environment: the same steps at toy sizes on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" != "--dry_run" ]]; then
  "${PYTHON:-python3}" -m venv .venv-device
  # shellcheck disable=SC1091
  . .venv-device/bin/activate
  pip install -q --upgrade pip
  pip install -q -e ".[cuda12]"
fi
python bench/device_check.py "$@"
