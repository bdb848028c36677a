"""The tutorial's recipe (configs/pets.py) on a TPU slice or a GPU host: a pod-sized global batch, bf16 compute.

What changes from configs/pets.py, and why:
- Global batch = chips x per-chip batch (default 8 x 32 = 256). The tutorial's 64 over a v5e-8 leave 8 images per
  chip, which the step's memory-bound roofline holds at 3,700 images/s per chip; 32 per chip reach 9,600
  (`python -m unet_jax.aot`, below).
- Learning rate: Adam's scales with the square root of the batch (Malladi et al. 2022, "On the SDEs and Scaling
  Rules for Adaptive Gradient Algorithms"), from the tutorial's 1e-3 at batch 64: 2e-3 at 256. A one-epoch linear
  warmup and a cosine decay keep the first large steps from wrecking the decoder's random init.
- Compute in bfloat16 (parameters, BatchNorm statistics and the loss stay float32): TPUs' and recent GPUs' matrix
  units run bf16 at full rate, and the gradients cross the chips at half the bytes.
- The same 20 epochs: at 256 that is 15 steps an epoch (the last one padded), 300 in all; eval after every epoch.

Arguments (the part after ':' in --config; configs/common.py reads it):
  configs/pets_tpu.py                       a v5e-8 (or v6e-8): 8 chips, 32 images each, global batch 256.
  configs/pets_tpu.py:chips=16              a v4-32 (16 chips, 4 hosts; run through launch/train.sh).
  configs/pets_tpu.py:chips=1,per_chip=256  one GPU.

Compiled for TPU on a CPU (`python -m unet_jax.aot --config configs/pets_tpu.py --topology v5e-8`), per chip: the
frozen-encoder train step holds 217 MB of its 16 GiB HBM, reads 2.7 GB and is memory-bound at 3.3 ms, i.e. at most
~77,000 images/s for the slice (9,600 per chip: 2.6x configs/pets.py's 3,700 at 8 images per chip in float32); a
chip fits up to 4,096 images per step in bfloat16. bench/README.md has the tables per slice. Not yet run on TPU or
GPU hardware: expect the tutorial's curves (test pixel accuracy near 0.9 after 20 epochs), unmeasured at this
batch.

Needs the prepared dataset and the ImageNet weights as configs/pets.py does (on a pod, every host reads the same
data_dir, e.g. a gs:// bucket; launch/prepare_data.sh).

Run:
  python -m unet_jax.train --config configs/pets_tpu.py --workdir gs://BUCKET/runs/pets_tpu --config.data.data_dir=DIR
"""

import math
import pathlib
import runpy

import ml_collections

_CONFIGS = pathlib.Path(__file__).resolve().parent  # Config files, not a package: siblings load by path.
common = runpy.run_path(str(_CONFIGS / "common.py"))
pets = runpy.run_path(str(_CONFIGS / "pets.py"))
TUTORIAL_BATCH, TUTORIAL_LEARNING_RATE = 64, 1e-3
TRAIN_EXAMPLES = 3680  # oxford_iiit_pet's train split.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common["parse_arg"](arg, chips=8, per_chip=32)
  config = pets["get_config"]()
  config.batch_size = arg.chips * arg.per_chip
  config.learning_rate = TUTORIAL_LEARNING_RATE * math.sqrt(config.batch_size / TUTORIAL_BATCH)
  config.lr_schedule = "cosine"
  config.warmup_steps = -(-TRAIN_EXAMPLES // config.batch_size)  # One epoch (its last batch padded).
  config.model.dtype = "bfloat16"
  return config
