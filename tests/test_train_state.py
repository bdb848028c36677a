"""The frozen-encoder split and the unfreeze phase, on the real U-Net (alpha 0.35, 64 px) and the offline data."""

import functools
import runpy

import jax
import numpy as np
import optax
import pytest
import train_testlib
from train_testlib import synthetic_data_dir  # noqa: F401  (a fixture)

from unet_jax import data, sharding, train_state, trainer
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
  steps = {trains: trainer.make_train_fn(config, model, tx, mesh, train_encoder=trains) for trains, tx in txs.items()}
  initial = jax.device_get(train_state.jit_init_fn(config, model, txs[False], mesh)())
  # Compiled without LLVM's optimisation, the init draws what the optimised program draws.
  optimised = jax.device_get(jax.jit(train_state.make_init_fn(config, model, txs[False]))())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), initial, optimised)

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
  first_moments = [
    state.mu
    for state in jax.tree.leaves(
      frozen.opt_state.inner_states["decoder"], is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)
    )
    if isinstance(state, optax.ScaleByAdamState)
  ]
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
  jax.tree.map(
    np.testing.assert_array_equal, state.batch_stats[train_state.ENCODER], initial.batch_stats[train_state.ENCODER]
  )


def test_a_frozen_encoders_step_differentiates_the_decoder_alone_to_the_same_new_state():
  """The frozen-encoder step takes no gradient through the encoder, whose optimizer would discard it: under 0.6x the
  equations of the same step differentiating everything (0.39x for the tiny model), and the same new state."""
  config = train_testlib.tiny_config("")
  model, txs = _tiny_model_and_optimizers(config)
  mesh = sharding.make_mesh()
  steps = {trains: trainer.make_train_fn(config, model, txs[False], mesh, train_encoder=trains) for trains in (0, 1)}
  state = jax.device_get(train_state.jit_init_fn(config, model, txs[False], mesh)())
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.uniform(-1, 1, (8, 64, 64, 3)).astype(np.float32),
    "mask": rng.integers(0, config.model.num_classes, (8, 64, 64)).astype(np.int32),
    "weight": np.ones(8, np.float32),
  }
  equations = {trains: len(step.trace(state, batch).jaxpr.eqns) for trains, step in steps.items()}
  assert equations[0] < 0.6 * equations[1], equations
  # Each step donates a copy: the CPU backend can run on a host array's memory, which donating would overwrite.
  decoder_only, everything = (jax.device_get(steps[trains](jax.tree.map(np.copy, state), batch)) for trains in (0, 1))
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), decoder_only, everything)
  # The schedule's first learning rate is 0: the gradients show in Adam's moments.
  assert any(_changed(state.opt_state, decoder_only[0].opt_state))


def test_pretrained_weights_of_another_alpha_are_a_clear_error():
  config = train_testlib.tiny_config("")
  model, txs = _tiny_model_and_optimizers(config)
  other = jax.eval_shape(lambda: UNet(alpha=0.5).init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32)))
  encoder = {
    collection: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), other[collection][train_state.ENCODER])
    for collection in ("params", "batch_stats")
  }
  with pytest.raises(ValueError, match="config.model.alpha"):
    jax.eval_shape(
      lambda: train_state.create_train_state(model, txs[False], jax.random.PRNGKey(0), 64, encoder, "alpha_0.5.h5")
    )


def _abstract_tiny_batch() -> dict[str, jax.ShapeDtypeStruct]:
  """A batch of the tiny config (8 images of 64 px) as shapes, for steps that are only traced or compiled."""
  return {
    "image": jax.ShapeDtypeStruct((8, 64, 64, 3), np.float32),
    "mask": jax.ShapeDtypeStruct((8, 64, 64), np.int32),
    "weight": jax.ShapeDtypeStruct((8,), np.float32),
  }


def test_bfloat16_train_step_keeps_float32_parameters_and_loss():
  config = train_testlib.tiny_config("", {"model.dtype": "bfloat16"})
  model, txs = _tiny_model_and_optimizers(config)
  mesh = sharding.make_mesh()
  state = jax.eval_shape(train_state.make_init_fn(config, model, txs[False]))
  batch = _abstract_tiny_batch()
  state, step_metrics = jax.eval_shape(
    trainer.make_train_fn(config, model, txs[False], mesh, train_encoder=False), state, batch
  )
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
  assert step_metrics["loss"].dtype == np.float32


def test_on_a_cpu_the_trainable_step_is_compiled_to_keep_fewer_activations_alive():
  """`trainer.compiler_options`: XLA:CPU's memory-optimised schedule for the step that trains the encoder, which the
  trainer compiles it with; nothing for the frozen-encoder step or another platform."""
  config = train_testlib.tiny_config("")
  model, txs = _tiny_model_and_optimizers(config)
  mesh = sharding.make_mesh()
  state = jax.eval_shape(train_state.make_init_fn(config, model, txs[True]))
  batch = _abstract_tiny_batch()
  lowered = trainer.make_train_fn(config, model, txs[True], mesh, train_encoder=True).lower(state, batch)
  options = trainer.compiler_options("cpu", train_encoder=True)
  scheduled = lowered.compile(options).memory_analysis().temp_size_in_bytes
  default = lowered.compile().memory_analysis().temp_size_in_bytes
  assert scheduled < 0.85 * default, (scheduled, default)
  assert trainer.compiler_options("cpu", train_encoder=False) == {}
  assert trainer.compiler_options("gpu", train_encoder=True) == trainer.compiler_options("tpu", True) == {}


# Float64 reassociation bound for what the forward pass alone computes (BatchNorm's statistics): unit roundoff
# u = 2**-53 = 1.1e-16, times n <= 768 terms per reduction (3 rows of at most 16x16 pixels per BatchNorm), times an
# allowance of 1e6 for the conditioning (BatchNorm's fast variance E[x^2] - E[x]^2 over 3 rows at 1x1 at the
# bottom of a 32 px U-Net) and its growth through the ~60 layers: 768 * 1.1e-16 * 1e6 = 8.5e-8. A leak moves them
# by O(1) of the step's change (measured with the mask off: 198).
PADDING_TOL_FLOAT64 = 1e-7
# The loss stays float32 in a float64 model (UNet returns float32 logits, losses.cross_entropy computes in float32),
# and XLA computes its arrays of 3 and of 8 rows differently: some entries of the cotangent that backprop starts
# from differ by an ulp (2^-24 = 6e-8 relative; measured: 208 of 9216). Backprop is linear in that cotangent, so the
# gradients, the parameter update and the loss carry float32 rounding: 6e-8 times an allowance of ~170 for a few ulps
# and cancellation in the backward sums. A leak moves them by O(1e-2..1) (measured with the mask off: 1.1 of the
# gradient, 8e-3 of the loss).
PADDING_TOL_FLOAT32 = 1e-5


def _float_leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree) if np.issubdtype(np.asarray(x).dtype, np.floating)]


def _assert_within(ours, theirs, initial, tolerance: float) -> None:
  """Normwise over a tree: max |ours - theirs| <= `tolerance` times the largest change the step made to any leaf of
  `theirs` (from `initial`). Normwise, as rounding bounds are: a leaf whose true change is 0 (the bias of a BatchNorm
  that a convolution and another BatchNorm follow has a zero gradient) holds rounding noise alone, of any size
  relative to itself."""
  for o, t in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    if not np.issubdtype(np.asarray(t).dtype, np.floating):
      np.testing.assert_array_equal(o, t)  # Step counts.
  ours, theirs, initial = _float_leaves(ours), _float_leaves(theirs), _float_leaves(initial)
  scale = max(np.max(np.abs(t - i)) for t, i in zip(theirs, initial))
  error = max(np.max(np.abs(o - t)) for o, t in zip(ours, theirs))
  assert scale > 0 and error <= tolerance * scale, f"differs by {error:.3g}, {error / scale:.3g} of the step's change"


def test_padding_rows_change_nothing_a_batch_of_the_real_rows_alone_would_not():
  """An epoch's partial batch, padded to the batch size with weight-0 rows (data.drop_remainder=False), trains as
  the real rows alone do: padding enters neither the loss nor BatchNorm's batch statistics (the encoder's too, when
  it trains from scratch), however extreme its pixels.

  Exactly: two paddings of different contents give bit-identical steps (same shapes, so the same reduction order:
  any influence of the padding's content shows). Within rounding: the real rows alone, a batch of another shape
  whose reductions associate differently. In float32, BatchNorm over 3 rows at 1x1 is ill-conditioned enough for
  that to move the statistics by ~1e-4 of their change, so this part runs in float64 (measured: 2e-13 of the
  statistics' change, 1.4e-8 of the gradient's, the float32 loss's share), where a leak's O(1) stands out."""
  # SGD at a constant rate: a non-zero learning rate from the first step (the synthetic config's warmup starts at
  # 0, which left the parameters unchanged), and an update linear in the gradient (Adam's first is ~lr*sign(g),
  # which turns a gradient of pure rounding noise into a +-lr difference).
  config = train_testlib.tiny_config(
    "",
    {
      "model.freeze_encoder": False,
      "data.image_size": 32,
      "optimizer": "sgd",
      "lr_schedule": "constant",
      "warmup_steps": 0,
    },
  )
  model, txs = _tiny_model_and_optimizers(config)
  initial = jax.device_get(jax.jit(train_state.make_init_fn(config, model, txs[True]))())
  rng = np.random.default_rng(0)
  real = {
    "image": rng.uniform(-1, 1, (3, 32, 32, 3)),
    "mask": rng.integers(0, 3, (3, 32, 32)).astype(np.int32),
    "weight": np.ones(3),
  }

  def padded(image, mask):
    return {
      "image": np.concatenate([real["image"], image]),
      "mask": np.concatenate([real["mask"], mask]),
      "weight": np.concatenate([real["weight"], np.zeros(5)]),
    }

  fifty = padded(np.full((5, 32, 32, 3), 50.0), np.full((5, 32, 32), 2, np.int32))
  noise = padded(rng.normal(0.0, 50.0, (5, 32, 32, 3)), np.zeros((5, 32, 32), np.int32))
  # One float64 step serves both parts (a float32 one would be another compile; the exact part holds there too).
  with jax.enable_x64(True):
    to_float64 = functools.partial(
      jax.tree.map, lambda x: x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x
    )
    state = to_float64(initial)
    step = jax.jit(
      functools.partial(
        trainer.train_step,
        model=model.clone(dtype=np.float64),
        tx=txs[True],
        class_weights=(),
        dice_weight=0.0,
        padded_batches=True,
        train_encoder=True,
      )
    )
    from_fifty, from_noise, from_real = [
      jax.device_get(step(state, to_float64(batch))) for batch in (fifty, noise, real)
    ]
  jax.tree.map(np.testing.assert_array_equal, from_noise, from_fifty)

  (from_padded, padded_metrics), (from_real, real_metrics) = from_fifty, from_real
  assert {x.dtype for x in jax.tree.leaves(from_real.params)} == {np.dtype(np.float64)}
  # Not vacuous: the step moves every parameter, and every BatchNorm statistic, the encoder's included.
  assert all(_changed(state.params, from_real.params))
  assert all(_changed(state.batch_stats[train_state.ENCODER], from_real.batch_stats[train_state.ENCODER]))
  assert all(_changed(state.batch_stats, from_real.batch_stats))
  _assert_within(from_padded.batch_stats, from_real.batch_stats, state.batch_stats, PADDING_TOL_FLOAT64)
  _assert_within(from_padded.params, from_real.params, state.params, PADDING_TOL_FLOAT32)
  _assert_within(from_padded.opt_state, from_real.opt_state, state.opt_state, PADDING_TOL_FLOAT32)  # The gradient.
  for name in real_metrics:
    _assert_within(padded_metrics[name], real_metrics[name], np.zeros(()), PADDING_TOL_FLOAT32)


@pytest.mark.parametrize("arg, batch_size", [(None, 256), ("chips=16", 512), ("chips=1,per_chip=256", 256)])
def test_pets_tpu_config_scales_the_tutorials_recipe_to_its_batch(arg, batch_size):
  configs = train_testlib.REPO_ROOT / "configs"
  tutorial = runpy.run_path(str(configs / "pets.py"))["get_config"]()
  config = runpy.run_path(str(configs / "pets_tpu.py"))["get_config"](arg)
  assert config.batch_size == batch_size and config.model.dtype == "bfloat16"
  assert config.learning_rate == pytest.approx(tutorial.learning_rate * (batch_size / tutorial.batch_size) ** 0.5)
  assert config.lr_schedule == "cosine" and config.warmup_steps == -(-3680 // batch_size)  # One epoch.
  # Nothing else differs from the tutorial's recipe.
  tutorial.update(batch_size=batch_size, learning_rate=config.learning_rate, lr_schedule="cosine")
  tutorial.update(warmup_steps=config.warmup_steps)
  tutorial.model.dtype = "bfloat16"
  assert config.to_dict() == tutorial.to_dict()
