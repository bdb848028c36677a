"""The frozen-encoder split and the unfreeze phase, on the real U-Net (alpha 0.35, 64 px) and the offline data."""

import functools

import jax
import numpy as np
import optax
import pytest

import train_testlib
from train_testlib import synthetic_data_dir  # noqa: F401  (a fixture)
from unet_jax import data, sharding, train, train_state
from unet_jax.models import UNet

NUM_STEPS = 3
NUM_TRAIN_STEPS = train_testlib.TINY["num_train_steps"]  # The trainer's schedule, so its compiled steps are shared.


def _size(tree) -> int:
  """Values in the arrays of `tree`, scalars (optimizer step counts) left out."""
  return sum(x.size for x in jax.tree.leaves(tree) if np.ndim(x))


def _changed(before, after) -> list[bool]:
  return [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))]


def _decoder(tree) -> dict:
  return {name: subtree for name, subtree in tree.items() if name != train_state.ENCODER}


def _tiny_model_and_optimizers(config):
  model = train_state.create_model(config.model)
  txs = {trains: train_state.make_optimizer(config, NUM_TRAIN_STEPS, train_encoder=trains) for trains in (False, True)}
  return model, txs


def test_frozen_encoder_then_unfreeze_phase(synthetic_data_dir):  # noqa: F811
  """One test for both phases, so that the compiles happen once (pytest-xdist would split a shared fixture)."""
  config = train_testlib.tiny_config(synthetic_data_dir)
  mesh = sharding.make_mesh()
  stream = data.train_batches(config.data, global_batch_size=config.batch_size, seed=0)
  batches = [sharding.shard_batch(next(stream), mesh) for _ in range(NUM_STEPS)]
  model, txs = _tiny_model_and_optimizers(config)
  # The trainer's own jitted functions (the persistent compilation cache then serves both test modules).
  steps = {trains: train.make_train_fn(config, model, tx, mesh) for trains, tx in txs.items()}
  initial = jax.device_get(jax.jit(train.make_init_fn(config, model, txs[False]),
                                   out_shardings=sharding.replicated(mesh))())

  # Frozen: the encoder's params and BatchNorm statistics are bit-identical, every decoder variable trains, and the
  # optimizer holds Adam's two moments for the decoder only (scalar step counts aside).
  frozen = initial
  for batch in batches:
    frozen, _ = steps[False](frozen, batch)
  frozen = jax.device_get(frozen)
  for collection in ("params", "batch_stats"):
    before, after = getattr(initial, collection), getattr(frozen, collection)
    jax.tree.map(np.testing.assert_array_equal, after[train_state.ENCODER], before[train_state.ENCODER])
  assert any(_changed(_decoder(initial.params), _decoder(frozen.params)))
  assert all(_changed(_decoder(initial.batch_stats), _decoder(frozen.batch_stats)))
  # Every decoder parameter gets a gradient: a non-zero Adam first moment. (Behind the tiny random encoder the
  # deepest block's gradients are ~1e-14, too small to move its float32 BatchNorm scale visibly in three steps.)
  first_moments = [state.mu for state in jax.tree.leaves(frozen.opt_state.inner_states["decoder"],
                                                        is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
                   if isinstance(state, optax.ScaleByAdamState)]
  assert all(np.any(moment != 0) for moment in jax.tree.leaves(_decoder(first_moments[0])))
  assert _size(frozen.params[train_state.ENCODER]) > 0
  assert jax.tree.leaves(frozen.opt_state.inner_states["encoder"]) == []
  assert _size(frozen.opt_state) == 2 * _size(_decoder(frozen.params))

  # Unfrozen after one step: fresh encoder moments, the decoder's optimizer state carried over unchanged.
  state, _ = steps[False](initial, batches[0])
  decoder_state = jax.device_get(state.opt_state.inner_states["decoder"])
  state = jax.jit(functools.partial(train_state.unfreeze_encoder, tx=txs[True]))(state)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state.inner_states["decoder"]), decoder_state)
  assert _size(state.opt_state.inner_states["encoder"]) == 2 * _size(state.params[train_state.ENCODER])
  for batch in batches[1:]:
    state, _ = steps[True](state, batch)
  state = jax.device_get(state)
  assert any(_changed(initial.params[train_state.ENCODER], state.params[train_state.ENCODER]))
  # Fine-tuning keeps the encoder's BatchNorm in inference mode (Keras' advice): its statistics stay put.
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats[train_state.ENCODER],
               initial.batch_stats[train_state.ENCODER])


def test_pretrained_weights_of_another_alpha_are_a_clear_error():
  config = train_testlib.tiny_config("")
  model, txs = _tiny_model_and_optimizers(config)
  other = jax.eval_shape(lambda: UNet(alpha=0.5).init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32)))
  encoder = {collection: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), other[collection][train_state.ENCODER])
             for collection in ("params", "batch_stats")}
  with pytest.raises(ValueError, match="config.model.alpha"):
    jax.eval_shape(lambda: train_state.create_train_state(model, txs[False], jax.random.PRNGKey(0), 64, encoder,
                                                          "alpha_0.5.h5"))


def test_bfloat16_train_step_keeps_float32_parameters_and_loss():
  config = train_testlib.tiny_config("", {"model.dtype": "bfloat16"})
  model, txs = _tiny_model_and_optimizers(config)
  mesh = sharding.make_mesh()
  state = jax.eval_shape(train.make_init_fn(config, model, txs[False]))
  batch = {"image": jax.ShapeDtypeStruct((8, 64, 64, 3), np.float32),
           "mask": jax.ShapeDtypeStruct((8, 64, 64), np.int32), "weight": jax.ShapeDtypeStruct((8,), np.float32)}
  state, step_metrics = jax.eval_shape(train.make_train_fn(config, model, txs[False], mesh), state, batch)
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
  assert step_metrics["loss"].dtype == np.float32


def test_padding_rows_change_nothing_a_batch_of_the_real_rows_alone_would_not():
  """An epoch's partial batch, padded to the batch size with weight-0 rows (data.drop_remainder=False), trains as
  the real rows alone do: padding enters neither the loss nor BatchNorm's batch statistics (the encoder's too, when
  it trains from scratch), however extreme its pixels."""
  config = train_testlib.tiny_config("", {"model.freeze_encoder": False, "data.image_size": 32})
  model, txs = _tiny_model_and_optimizers(config)
  state = jax.jit(train.make_init_fn(config, model, txs[False]))()
  rng = np.random.default_rng(0)
  real = {"image": rng.uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32),
          "mask": rng.integers(0, 3, (3, 32, 32)).astype(np.int32), "weight": np.ones(3, np.float32)}
  padded = {"image": np.concatenate([real["image"], np.full((5, 32, 32, 3), 50.0, np.float32)]),
            "mask": np.concatenate([real["mask"], np.full((5, 32, 32), 2, np.int32)]),
            "weight": np.concatenate([real["weight"], np.zeros(5, np.float32)])}
  step = jax.jit(functools.partial(train.train_step, model=model, tx=txs[False], class_weights=(), dice_weight=0.0,
                                   padded_batches=True))
  (from_real, real_metrics), (from_padded, padded_metrics) = step(state, real), step(state, padded)
  assert any(_changed(state.batch_stats[train_state.ENCODER], from_real.batch_stats[train_state.ENCODER]))
  for ours, theirs in ((from_padded.params, from_real.params), (from_padded.batch_stats, from_real.batch_stats),
                       (padded_metrics, real_metrics)):
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=2e-6), ours, theirs)
