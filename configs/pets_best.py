"""The best recipe measured on pets_sample: the encoder fine-tuned in a second phase, 288 px, test-time flips.

What it does: configs/pets_sample.py's model and data (ImageNet MobileNetV2 encoder, random flips, batch 16) at
288 px instead of 128, trained for 400 steps: the first quarter with the encoder frozen (the decoder learns to read
the ImageNet features), then the encoder trains too at a 10x lower, constant learning rate while the decoder's Adam
1e-3 follows a 50-step linear warmup and a cosine decay to 0. The encoder's BatchNorm keeps its ImageNet running
statistics throughout (model.freeze_encoder=True keeps BN in inference mode, as Keras fine-tuning does), which is
what batch 16 needs. Eval and predict average each image's logits with its mirror image's. Eval scores the
protocol's 128 px masks (data.eval_mask_size; the logits are resized to them), so its figures compare with
configs/pets_sample.py's.
Each lever was chosen on validation, one at a time (bench/quality.md): the second phase +0.022 validation mean IoU,
flip averaging +0.015, 160 px +0.014, 224 px +0.020 more, and 288 px +0.006 more (the mean of two disjoint
validation folds, +0.004 and +0.009, against the rule written down before the runs: at least +0.005). 1,200 steps
instead of 400 gained nothing (300 images overfit), and scale/crop + colour augmentation, a Dice term, class
weights, a 3x higher encoder learning rate and multi-scale test (eval_scales) were neutral (within +-0.005). For
half the time, --config.data.image_size=224 gives test mean IoU 0.767 (seeds 0-1).

Modes (the part after ':' in --config):
  configs/pets_best.py        ../shared/data/pets_sample: train on trainval (300), evaluate test (298) at the end.
  configs/pets_best.py:val    train on 240 of trainval, evaluate the 60 held out every 100 steps (choose here);
                              :valK for validation fold K = 0..4 (configs/pets_sample.py).
  configs/pets_best.py:full   the full tfds oxford_iiit_pet (3,680 train / 3,669 test, needs
                              `tfds build oxford_iiit_pet`): the same recipe over 20 epochs of 3,680 // 16 steps,
                              the encoder unfrozen after the first quarter. Not run on this machine.

Hardware and time: 86-95 minutes on one core of this 2-core machine (taskset -c 0, the other core busy), 1.8x the
224 px recipe's 42-52; 47 minutes on both cores.
Expected result (bench/quality.md, mean of seeds 0-2): test pixel accuracy 0.922, mean IoU 0.783 +- 0.004 (0.779,
0.786, 0.784; pet 0.856, background 0.926, border 0.567), against 0.697 (mean of 7 seeds) for configs/pets_sample.py's
tutorial recipe (0.690 with each epoch's partial batch dropped, as this config drops it) and 0.767 at 224 px (seeds
0-1); issue 7's target is 0.78.

Run from the repository root:
  python -m unet_jax.train --config configs/pets_best.py --workdir runs/pets_best
"""

import importlib.util
import pathlib

import ml_collections

TRAIN_EXAMPLES_FULL = 3680  # oxford_iiit_pet's train split.


def _pets_sample_config(mode: str) -> ml_collections.ConfigDict:
  """configs/pets_sample.py's config: a config file, not a package module, so loaded by path."""
  spec = importlib.util.spec_from_file_location("pets_sample", pathlib.Path(__file__).with_name("pets_sample.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(mode)


def get_config(mode: str = "test") -> ml_collections.ConfigDict:
  full = mode == "full"
  config = _pets_sample_config("test" if full else mode)
  config.num_train_steps = 20 * (TRAIN_EXAMPLES_FULL // config.batch_size) if full else 400
  # Above MobileNetV2's ImageNet 224 px (the thin border class gains most), scored on the protocol's 128 px masks.
  config.data.image_size = 288
  config.data.eval_mask_size = 128
  # Measured so (bench/quality.md): each epoch's partial batch dropped, unlike configs/pets_sample.py's tutorial stream.
  config.data.drop_remainder = True
  config.learning_rate = 1e-3
  config.lr_schedule = "cosine"
  config.warmup_steps = 50
  config.unfreeze_at_step = config.num_train_steps // 4
  config.encoder_learning_rate = 1e-4
  config.eval_flip_average = True
  config.eval_every_steps = 100 if mode.startswith("val") else config.num_train_steps
  config.checkpoint_every_steps = 100
  if full:
    config.model.pretrained = "imagenet"
    config.data.name = "oxford_iiit_pet"
    config.data.eval_split = "test"
    config.eval_every_steps = TRAIN_EXAMPLES_FULL // config.batch_size  # Every epoch.
  return config
