"""Real data: the frozen ImageNet encoder recipe on ../shared's Oxford-IIIT Pet sample learns within a minute of CPU.

configs/folder.py on `pets_sample` (official trainval list for training, test list for eval) with the real ImageNet
MobileNetV2 weights; 64 px and 50 steps keep it short. The longer run and its figure: configs/pets_sample.py and
experiments/pets_quality/.
"""

import runpy

import train_testlib

from unet_jax import trainer


def test_frozen_imagenet_encoder_learns_real_pets(shared_dir, imagenet_h5, tmp_path):
  config = runpy.run_path(str(train_testlib.REPO_ROOT / "configs" / "folder.py"))["get_config"]()
  config.model.pretrained = str(imagenet_h5)
  config.model.bn_momentum = 0.9  # 50 steps: the decoder's running statistics must catch up for eval.
  folder = config.data.folder
  folder.root = str(shared_dir / "data" / "pets_sample")
  folder.masks = "annotations/trimaps"
  folder.train_list = "annotations/trainval.txt"
  folder.test_list = "annotations/test.txt"
  folder.mask_value_map = "1:0,2:1,3:2"
  config.data.image_size = 64
  config.batch_size = 16
  config.learning_rate = 3e-3
  config.num_train_steps = 50
  config.log_every_steps = 25
  config.eval_every_steps = config.checkpoint_every_steps = 50
  config.num_prediction_examples = 2

  final = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert sum(map(sum, final["confusion_matrix"])) == 298 * 64 * 64  # The whole official test list.
  # Predicting background everywhere scores 0.60 / 0.20 here (background is ~60% of the test pixels).
  assert final["pixel_accuracy"] > 0.75
  assert final["mean_iou"] > 0.45
  assert final["iou_per_class"][0] > 0.5  # The pet itself.
