"""The train state (one pytree), the model built from its config, and the optimizer with the frozen-encoder split.

The frozen encoder is a label in `optax.multi_transform` mapped to `set_to_zero`: it gets no update and holds no
optimizer state, and since nothing reads its gradient XLA drops that part of the backward pass. The optional
second phase (`unfreeze_at_step`) swaps in an optimizer whose encoder label trains at `encoder_learning_rate`;
which phase a step belongs to is a function of the step alone, so a checkpoint's state structure is known before
restoring it.
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from unet_jax import errors, pretrained, sharding
from unet_jax.models import UNet, cpu_ops

ENCODER = "encoder"  # The top-level params/batch_stats entry that holds the MobileNetV2 variables.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken, also the data stream position.
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  rng: jax.Array  # Base key; step s uses fold_in(rng, s), so a resumed run draws the same dropout masks.


def create_model(model_config: ml_collections.ConfigDict, platform: str | None = None) -> UNet:
  """The U-Net of `model_config`, its convolutions formulated for `platform`: the platform of the devices it will be
  compiled for (`sharding.platform(mesh)`; None: JAX's default backend), which "auto" follows."""
  if model_config.dtype not in DTYPES:
    raise errors.ConfigError(
      f"config.model.dtype={model_config.dtype!r} is not supported; use one of {sorted(DTYPES)}."
    )
  if model_config.product_dtype not in ("", *DTYPES):
    raise errors.ConfigError(
      f"config.model.product_dtype={model_config.product_dtype!r} is not supported: use one of {sorted(DTYPES)}, "
      f"or '' for the compute dtype (config.model.dtype)."
    )
  return UNet(
    num_classes=model_config.num_classes,
    alpha=model_config.alpha,
    decoder_filters=tuple(model_config.decoder_filters),
    upsample=model_config.upsample,
    dropout_rate=model_config.dropout_rate,
    freeze_encoder=model_config.freeze_encoder,
    dtype=DTYPES[model_config.dtype],
    conv_impl=cpu_ops.resolve_conv_impl(model_config.conv_impl, platform),
    bn_momentum=model_config.bn_momentum if model_config.bn_momentum > 0 else None,
    product_dtype=None
    if model_config.product_dtype in ("", model_config.dtype)
    else DTYPES[model_config.product_dtype],
  )


def load_encoder_variables(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The pretrained MobileNetV2 variables `model.pretrained` names ("imagenet", a Keras .h5 path), None for ""."""
  model_config = config.model
  if not model_config.pretrained:
    return None
  if model_config.pretrained == "imagenet":
    rows = model_config.imagenet_rows
    if rows <= 0:
      rows = pretrained.keras_default_rows(config.data.image_size, config.data.image_size)
    return pretrained.load_mobilenet_v2_imagenet(alpha=model_config.alpha, rows=rows)
  return pretrained.mobilenet_v2_variables_from_h5(model_config.pretrained, alpha=model_config.alpha)


def _check_encoder_shapes(model_variables: Mapping[str, Any], loaded: Mapping[str, Any], source: str) -> None:
  expected = jax.tree.map(jnp.shape, model_variables)
  got = jax.tree.map(jnp.shape, loaded)
  if expected != got:
    raise errors.ConfigError(
      f"The pretrained encoder from {source!r} does not fit this model's MobileNetV2 (shapes differ; is "
      f"config.model.alpha the alpha the weights were trained with?). Set config.model.alpha to match the weights, "
      f"or config.model.pretrained='' for a random init."
    )


def create_train_state(
  model: nn.Module,
  tx: optax.GradientTransformation,
  rng: jax.Array,
  image_size: int,
  encoder_variables: Mapping[str, Any] | None = None,
  pretrained_source: str = "",
) -> TrainState:
  """Initialises the model (the encoder from `encoder_variables` when given) and the optimizer state. Pure: jit it."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init({"params": init_rng}, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
  params, batch_stats = dict(variables["params"]), dict(variables.get("batch_stats", {}))
  if encoder_variables is not None:
    for collection, tree in (("params", params), ("batch_stats", batch_stats)):
      _check_encoder_shapes(tree[ENCODER], encoder_variables[collection], pretrained_source)
      tree[ENCODER] = jax.tree.map(jnp.asarray, encoder_variables[collection])
  return TrainState(
    step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=tx.init(params), rng=state_rng
  )


def encoder_trains(config: ml_collections.ConfigDict, step: int) -> bool:
  """Whether the encoder has an optimizer at `step`: always unless frozen, and from `unfreeze_at_step` on."""
  return (not config.model.freeze_encoder) or 0 <= config.unfreeze_at_step <= step


def learning_rate_schedule(config: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  if config.lr_schedule == "constant":
    if not config.warmup_steps:
      return optax.constant_schedule(config.learning_rate)
    return optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  if config.lr_schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps, max(num_train_steps, config.warmup_steps + 1)
    )
  raise errors.ConfigError(f"config.lr_schedule={config.lr_schedule!r} is not supported; use one of {LR_SCHEDULES}.")


def _optimizer(
  config: ml_collections.ConfigDict, learning_rate: optax.ScalarOrSchedule
) -> optax.GradientTransformation:
  if config.optimizer == "adam":
    tx = optax.adam(learning_rate)
  elif config.optimizer == "adamw":
    # Decay kernels only: decaying BatchNorm scales and biases towards zero hurts and is not what AdamW papers do.
    tx = optax.adamw(
      learning_rate, weight_decay=config.weight_decay, mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    )
  elif config.optimizer == "sgd":
    tx = optax.sgd(learning_rate, momentum=0.9)
  else:
    raise errors.ConfigError(f"config.optimizer={config.optimizer!r} is not supported; use one of {OPTIMIZERS}.")
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx


def _encoder_or_decoder(params: Mapping[str, Any]) -> dict[str, Any]:
  return {
    name: jax.tree.map(lambda _, n=name: "encoder" if n == ENCODER else "decoder", subtree)
    for name, subtree in params.items()
  }


def make_optimizer(
  config: ml_collections.ConfigDict, num_train_steps: int, *, train_encoder: bool
) -> optax.GradientTransformation:
  """The decoder's optimizer; the encoder's is `set_to_zero` while frozen, its own learning rate once unfrozen.

  With `model.freeze_encoder=False` the whole network is one group at `learning_rate`.

  Args:
    config: the run's config (optimizer, learning rates and schedule, grad_clip_norm, model.freeze_encoder).
    num_train_steps: the schedule's length.
    train_encoder: whether this is the phase in which a frozen encoder trains (`encoder_trains(config, step)`).

  Returns:
    The optax transformation for the whole params tree.
  """
  decoder_tx = _optimizer(config, learning_rate_schedule(config, num_train_steps))
  if not config.model.freeze_encoder:
    return decoder_tx
  encoder_tx = _optimizer(config, config.encoder_learning_rate) if train_encoder else optax.set_to_zero()
  return optax.multi_transform({"encoder": encoder_tx, "decoder": decoder_tx}, _encoder_or_decoder)


def unfreeze_encoder(state: TrainState, tx: optax.GradientTransformation) -> TrainState:
  """Moves a frozen-phase state to `tx` (the unfrozen optimizer): fresh encoder state, the decoder's kept as is."""
  fresh = tx.init(state.params)
  inner_states = {**fresh.inner_states, "decoder": state.opt_state.inner_states["decoder"]}
  return state.replace(opt_state=fresh._replace(inner_states=inner_states))


def make_init_fn(
  config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation
) -> Callable[..., TrainState]:
  """The pure function building a fresh state from the pretrained encoder variables (or None): jit it, or
  eval_shape it for the structure a checkpoint restores into."""

  def init(encoder_variables: Mapping[str, Any] | None = None) -> TrainState:
    return create_train_state(
      model, tx, jax.random.PRNGKey(config.seed), config.data.image_size, encoder_variables, config.model.pretrained
    )

  return init


def jit_init_fn(
  config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
) -> Callable[..., TrainState]:
  """`make_init_fn` jitted to a state replicated on `mesh`. It runs once, briefly: on CPU it is compiled without
  LLVM's optimisation, which for the random draws of every kernel takes most of the start-up (bench/README.md)."""
  options = {"xla_backend_optimization_level": 0} if sharding.platform(mesh) == "cpu" else None
  return jax.jit(make_init_fn(config, model, tx), out_shardings=sharding.replicated(mesh), compiler_options=options)


def abstract_state(
  config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
) -> TrainState:
  """The state's shapes and dtypes, replicated on `mesh`: what a checkpoint restores into (nothing is computed).

  The target sharding is the current mesh's, so a checkpoint written on N devices restores on any other count.
  """
  replicated = sharding.replicated(mesh)
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
    jax.eval_shape(make_init_fn(config, model, tx)),
  )


def state_to_restore(config: ml_collections.ConfigDict, step: int, mesh: jax.sharding.Mesh) -> TrainState:
  """The abstract state a checkpoint of `step` restores into, replicated on `mesh` (any device count). The optimizer's
  phase at `step` fixes the state's structure; the schedule's length does not enter it, so `step` stands in for
  num_train_steps."""
  tx = make_optimizer(config, max(step, 1), train_encoder=encoder_trains(config, step))
  return abstract_state(config, create_model(config.model, sharding.platform(mesh)), tx, mesh)
