"""bench/device_check.sh, the GPU check, in its dry run on this CPU: every figure it prints on a GPU, at toy sizes."""

import json
import os
import subprocess
import sys

from train_testlib import REPO_ROOT


def test_dry_run_prints_each_figure(shared_dir, tmp_path):
  env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
  command = ["bash", "bench/device_check.sh", "--dry_run", f"--out={tmp_path}"]
  result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  by_kind = {}
  for figure in figures:
    by_kind.setdefault(figure["figure"], []).append(figure)
  assert set(by_kind) == {"devices", "parity", "machine", "matmul_peak", "train_step", "pets_sample"}
  assert [peak["dtype"] for peak in by_kind["matmul_peak"]] == ["float32", "bfloat16"]
  assert all(peak["gflop_per_s"] > 0 for peak in by_kind["matmul_peak"])
  (parity,) = by_kind["parity"]
  assert parity["conv_impls"] == ["cpu", "xla"]  # The CPU formulations against the GPU's, both run on this CPU.
  assert parity["mask_agreement"] == 1.0 and parity["max_abs_logit_diff"] < 1e-5 * max(1.0, parity["logit_scale"])
  steps = by_kind["train_step"]
  assert len(steps) == 2 and all(step["images_per_s"] > 0 for step in steps)  # float32, then bfloat16.
  assert all(step["gflop_per_step"] > 0 and step["gflop_per_s"] > 0 for step in steps)  # XLA's count, priced.
  (training,) = by_kind["pets_sample"]
  assert 0 < training["mean_iou"] < 1 and training["expected"]["mean_iou"] == 0.70
