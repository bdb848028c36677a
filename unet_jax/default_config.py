"""Every config field with its default; the files in `configs/` start from this and override.

Configs are plain data: the trainer reads them, nothing here runs code. A field set to -1 means
"derive it" (documented per field), so every field keeps one type and `--config.x=y` overrides
parse without surprises.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Optimisation. `batch_size` is global (all devices of all processes).
  config.batch_size = 64
  config.num_epochs = 20
  config.num_train_steps = -1  # -1: num_epochs * (train examples // batch_size).
  config.optimizer = "adam"  # "adam" | "adamw" | "sgd".
  config.learning_rate = 1e-3  # Keras' Adam default, as in the tutorial.
  config.lr_schedule = "constant"  # "constant" | "cosine" (with `warmup_steps` of linear warmup).
  config.warmup_steps = 0
  config.weight_decay = 0.0  # Used by "adamw".
  config.grad_clip_norm = 0.0  # 0: no clipping.
  # Second phase: from this step on the encoder trains too, at its own learning rate. -1: never.
  config.unfreeze_at_step = -1
  config.encoder_learning_rate = 1e-5

  # Loss: softmax cross-entropy, optional per-class weights (empty: uniform) and Dice term.
  config.class_weights = ()
  config.dice_weight = 0.0

  # Cadence. -1 for eval/checkpoint means "once per epoch".
  config.log_every_steps = 50
  config.eval_every_steps = -1
  config.checkpoint_every_steps = -1
  config.max_to_keep = 3
  # JAX's persistent compilation cache: a second run of a config loads its compiled steps ("": off;
  # $JAX_COMPILATION_CACHE_DIR takes precedence).
  config.compilation_cache_dir = "~/.cache/unet_jax/xla"
  config.num_prediction_examples = 3  # Rows of the predictions/step_XXXXXX.png figure.
  # Eval and predict average the logits of each image and of its mirror image (test-time flips; 2x the eval cost).
  config.eval_flip_average = False
  # Eval and predict average the logits over the images resized by these factors (multi-scale test; len x the cost).
  config.eval_scales = (1.0,)

  config.model = ml_collections.ConfigDict()
  config.model.num_classes = 3
  config.model.alpha = 1.0
  config.model.decoder_filters = (512, 256, 128, 64)
  config.model.upsample = "transpose"  # "transpose" | "nearest".
  config.model.dropout_rate = 0.0
  config.model.freeze_encoder = True
  # "imagenet" (Keras' official weights, cached in ~/.keras/models), a path to a Keras .h5, or "" for random init.
  config.model.pretrained = "imagenet"
  # Which of Keras' ImageNet files (trained at 96..224 px); -1: as Keras picks it from data.image_size
  # (`pretrained.keras_default_rows`: the size itself when Keras publishes it, else 224).
  config.model.imagenet_rows = -1
  config.model.dtype = "float32"  # "bfloat16" computes in bf16 with float32 parameters.
  # The convolutions' operand dtype, summed in float32; "": model.dtype. "bfloat16" with float32 compute: products at
  # about twice the rate on CPUs with avx512_bf16 or AMX, everything else in float32 (accuracy in bench/README.md).
  config.model.product_dtype = ""
  # How convolutions compute: "auto" (matrix products on the CPU backend, lax.conv on GPU/TPU), "xla", "cpu".
  config.model.conv_impl = "auto"
  # BatchNorm momentum for every layer; -1 keeps Keras' (0.999 encoder, 0.99 decoder). From scratch and few steps: 0.9.
  config.model.bn_momentum = -1.0

  config.data = ml_collections.ConfigDict()
  config.data.name = "oxford_iiit_pet"  # "oxford_iiit_pet" | "synthetic_pets" | "folder".
  config.data.data_dir = ""  # tfds data_dir; "" means tfds' default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  config.data.image_size = 128
  # Eval scores masks of this size (0: image_size), the logits resized to it: recipes trained at different input
  # sizes are then compared on the same pixels (e.g. 128 px masks for a 160 px model).
  config.data.eval_mask_size = 0
  # "minus_one_to_one" (x / 127.5 - 1, what the MobileNetV2 encoder was trained with) or
  # "zero_to_one" (x / 255, the TF tutorial's choice).
  config.data.normalization = "minus_one_to_one"
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.shuffle_buffer = 1000
  # True: each epoch's last partial batch is dropped (every step a full batch). False: it is kept, as the TF tutorial's
  # `.batch()` keeps it, padded with weight-0 rows (every example every epoch).
  config.data.drop_remainder = True
  config.data.cache = True
  config.data.augment = ml_collections.ConfigDict()
  config.data.augment.flip = True  # Random horizontal flip, the same for image and mask.
  config.data.augment.scale_crop = False  # Zoom in by a random factor in [1, max_zoom] on a random window.
  config.data.augment.max_zoom = 1.5
  config.data.augment.color = False  # Random brightness and contrast.
  config.data.augment.brightness = 0.1  # Largest shift, as a fraction of the 0..255 range.
  config.data.augment.contrast = 0.2  # Contrast factor drawn from [1 - contrast, 1 + contrast].
  # Used when name == "folder": <root>/<images>/X.jpg pairs with <root>/<masks>/X.png (matched by stem).
  config.data.folder = ml_collections.ConfigDict()
  config.data.folder.root = ""
  config.data.folder.images = "images"
  config.data.folder.masks = "masks"
  # Raw mask value -> class id as "raw:class,...", e.g. "1:0,2:1,3:2" (pet trimaps) or "0:0,255:1" (binary masks).
  # "": raw values are the class ids.
  config.data.folder.mask_value_map = ""
  # Split list files relative to root (first token of each line is a stem, as in the Oxford-IIIT Pet
  # annotations/trainval.txt). Without lists, a seeded `test_fraction` of the stems is the "test" split.
  config.data.folder.train_list = ""
  config.data.folder.test_list = ""
  config.data.folder.test_fraction = 0.2
  config.data.folder.split_seed = 0
  config.data.folder.skip_bad_files = False  # True: log and skip unreadable or mismatched pairs instead of failing.
  return config
