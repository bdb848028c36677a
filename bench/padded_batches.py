"""What keeping each epoch's partial batch costs per step: the train step with BatchNorm masked to the real rows
(`padded_batches=True`, what data.drop_remainder=False compiles) against the unmasked step, on a full batch.

  python bench/padded_batches.py                         # frozen encoder and fully trainable, batch 16 at 128 px
  python bench/padded_batches.py --modes=trainable --rounds=9

One JSON line per mode: the median seconds per step of each variant, the rounds interleaved so that both see the
same machine, and their ratio. Random weights and data: only the arithmetic's cost matters here.
"""

import functools
import json
import time

import jax
import numpy as np
from absl import app, flags

from unet_jax import default_config, train, train_state

_MODES = flags.DEFINE_list("modes", ["frozen", "trainable"], "frozen: the encoder frozen (its BatchNorm in inference "
                           "mode, only the decoder's masked); trainable: every BatchNorm in training mode.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Examples per step.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Input height and width.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds; each times both variants.")
_STEPS = flags.DEFINE_integer("steps", 3, "Steps per variant per round.")


def _seconds_per_step(step, state, batch) -> float:
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / _STEPS.value


def measure(mode: str) -> dict:
  config = default_config.get_config()
  config.model.update(pretrained="", freeze_encoder=mode == "frozen")
  model = train_state.create_model(config.model)
  tx = train_state.make_optimizer(config, num_train_steps=1000, train_encoder=mode == "trainable")
  size, batch_size = _IMAGE_SIZE.value, _BATCH_SIZE.value
  state = jax.jit(functools.partial(train_state.create_train_state, model, tx, image_size=size))(
      jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = jax.device_put({"image": rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
                          "mask": rng.integers(0, 3, (batch_size, size, size)).astype(np.int32),
                          "weight": np.ones(batch_size, np.float32)})
  steps = {padded: jax.jit(functools.partial(train.train_step, model=model, tx=tx, class_weights=(), dice_weight=0.0,
                                             padded_batches=padded))
           for padded in (True, False)}
  for step in steps.values():  # Compile and warm up.
    jax.block_until_ready(step(state, batch))
  times = {padded: [] for padded in steps}
  for _ in range(_ROUNDS.value):
    for padded, step in steps.items():
      times[padded].append(_seconds_per_step(step, state, batch))
  masked, unmasked = np.median(times[True]), np.median(times[False])
  return {"bench": "padded_batches", "mode": mode, "batch_size": batch_size, "image_size": size,
          "backend": jax.default_backend(), "masked_s": round(float(masked), 4),
          "unmasked_s": round(float(unmasked), 4), "masked_over_unmasked": round(float(masked / unmasked), 3)}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}.")
  for mode in _MODES.value:
    if mode not in ("frozen", "trainable"):
      raise app.UsageError(f"--modes: {mode!r} is neither 'frozen' nor 'trainable'.")
    print(json.dumps(measure(mode)), flush=True)


if __name__ == "__main__":
  app.run(main)
