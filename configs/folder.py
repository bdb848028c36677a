"""Your own images and masks: `<root>/images/NAME.jpg` paired with `<root>/masks/NAME.png` by file stem.

What it trains: the pets recipe (frozen ImageNet MobileNetV2 encoder, 128 px, flips, Adam 1e-3) for 30 epochs of
batch 32 on any folder of images (JPEG/PNG/GIF/BMP/TIFF/WebP; RGB, RGBA, palette or grayscale) and masks
(single-channel or palette images). `data.folder.root` is required. Set `mask_value_map` to turn raw mask values into
class ids ("0:0,255:1" for binary masks, with --config.model.num_classes=2), and split with list files or a seeded
`test_fraction` (default 20% held out). Unreadable or mismatched files are errors that name the file (or logged skips
with skip_bad_files=True).

Example: the Oxford-IIIT Pet release (images.tar.gz and annotations.tar.gz from the dataset's site, extracted into
DIR: trimaps under annotations/, the official lists of 3,680 trainval / 3,669 test images; a GIF and an RGBA PNG are
among the .jpg files), from the repository root:

  python -m unet_jax.train --config configs/folder.py --workdir runs/oxford_pets \\
    --config.data.folder.root=DIR \\
    --config.data.folder.masks=annotations/trimaps \\
    --config.data.folder.train_list=annotations/trainval.txt \\
    --config.data.folder.test_list=annotations/test.txt \\
    --config.data.folder.mask_value_map=1:0,2:1,3:2

Hardware and time: an epoch is train images // 32 steps; on a CPU about as slow per image as configs/pets.py.
"""

import ml_collections

from unet_jax import default_config


def get_config() -> ml_collections.ConfigDict:
  config = default_config.get_config()
  config.batch_size = 32
  config.num_epochs = 30
  config.data.name = "folder"
  return config
