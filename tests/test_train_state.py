"""The frozen-encoder split and the unfreeze phase, on the real U-Net (alpha 0.35, 64 px) and the offline data."""

import functools
import types

import jax
import numpy as np
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


@pytest.fixture(scope="module")
def setup(synthetic_data_dir):  # noqa: F811
  """Everything compiled once for the module: the initial state and one train step per phase."""
  config = train_testlib.tiny_config(synthetic_data_dir)
  mesh = sharding.make_mesh()
  stream = data.train_batches(config.data, global_batch_size=config.batch_size, seed=0)
  batches = [sharding.shard_batch(next(stream), mesh) for _ in range(NUM_STEPS)]
  model = train_state.create_model(config.model)
  txs = {trains: train_state.make_optimizer(config, NUM_TRAIN_STEPS, train_encoder=trains) for trains in (False, True)}
  # The trainer's own jitted functions (the persistent compilation cache then serves both test modules).
  steps = {trains: train.make_train_fn(config, model, tx, mesh) for trains, tx in txs.items()}
  initial = jax.jit(train.make_init_fn(config, model, txs[False]), out_shardings=sharding.replicated(mesh))()
  return types.SimpleNamespace(config=config, batches=batches, model=model, txs=txs, steps=steps,
                               initial=jax.device_get(initial))


def test_frozen_encoder_is_bit_identical_decoder_trains_and_encoder_has_no_optimizer_state(setup):
  state = setup.initial
  for batch in setup.batches:
    state, _ = setup.steps[False](state, batch)
  state = jax.device_get(state)

  for collection in ("params", "batch_stats"):
    before, after = getattr(setup.initial, collection), getattr(state, collection)
    jax.tree.map(np.testing.assert_array_equal, after[train_state.ENCODER], before[train_state.ENCODER])
    assert all(_changed(_decoder(before), _decoder(after))), f"some decoder {collection} did not change"

  assert _size(state.params[train_state.ENCODER]) > 0
  assert jax.tree.leaves(state.opt_state.inner_states["encoder"]) == []
  # Adam's two moments for the decoder only: nothing sized like the encoder.
  assert _size(state.opt_state) == 2 * _size(_decoder(state.params))


def test_unfreeze_phase_trains_the_encoder_and_keeps_the_decoder_optimizer_state(setup):
  state, _ = setup.steps[False](setup.initial, setup.batches[0])
  decoder_state = jax.device_get(state.opt_state.inner_states["decoder"])

  state = jax.jit(functools.partial(train_state.unfreeze_encoder, tx=setup.txs[True]))(state)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.opt_state.inner_states["decoder"]), decoder_state)
  assert _size(state.opt_state.inner_states["encoder"]) == 2 * _size(state.params[train_state.ENCODER])

  for batch in setup.batches[1:]:
    state, _ = setup.steps[True](state, batch)
  state = jax.device_get(state)
  assert any(_changed(setup.initial.params[train_state.ENCODER], state.params[train_state.ENCODER]))
  # Fine-tuning keeps the encoder's BatchNorm in inference mode (Keras' advice): its statistics stay put.
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats[train_state.ENCODER],
               setup.initial.batch_stats[train_state.ENCODER])


def test_pretrained_weights_of_another_alpha_are_a_clear_error(setup):
  other = jax.eval_shape(lambda: UNet(alpha=0.5).init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32)))
  encoder = {collection: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), other[collection][train_state.ENCODER])
             for collection in ("params", "batch_stats")}
  with pytest.raises(ValueError, match="config.model.alpha"):
    jax.eval_shape(lambda: train_state.create_train_state(setup.model, setup.txs[False], jax.random.PRNGKey(0), 64,
                                                          encoder, "alpha_0.5.h5"))


def test_bfloat16_train_step_keeps_float32_parameters_and_loss(setup):
  config = train_testlib.tiny_config("", {"model.dtype": "bfloat16"})
  model = train_state.create_model(config.model)
  mesh = sharding.make_mesh()
  step_fn = train.make_train_fn(config, model, setup.txs[False], mesh)
  state, step_metrics = jax.eval_shape(step_fn, setup.initial, jax.tree.map(np.asarray, setup.batches[0]))
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
  assert step_metrics["loss"].dtype == np.float32
