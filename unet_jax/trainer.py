"""The trainer: `train_and_evaluate(config, workdir)`, which `python -m unet_jax.train` runs.

It reads top to bottom: config, mesh, data, model and optimizer, restore, the loop. The same code runs on one CPU,
N (simulated) devices, a GPU and several hosts: the batch is split over a one-axis mesh, the state is replicated,
and XLA inserts the gradient all-reduce.
"""

import contextlib
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from tqdm import tqdm

from unet_jax import (
  checkpointing,
  data,
  distributed,
  errors,
  evaluation,
  host_memory,
  losses,
  metric_writers,
  paths,
  sharding,
  train_state,
)
from unet_jax.models.unet import INPUT_MULTIPLE, check_test_time_scales
from unet_jax.train_state import TrainState


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  model,
  tx: optax.GradientTransformation,
  class_weights: tuple[float, ...],
  dice_weight: float,
  padded_batches: bool,
  train_encoder: bool,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on the batch's real examples: rows of weight 0 (the padding of an epoch's partial batch)
  enter neither the loss nor BatchNorm's batch statistics. `padded_batches`: whether the stream pads at all
  (data.drop_remainder=False); only then is BatchNorm handed the mask of real rows, which costs time on a CPU
  (`bench/train_step.py --padded_batches` measures it).

  Without `train_encoder` (a frozen encoder, whose optimizer is `set_to_zero`) only the decoder is differentiated:
  the encoder's gradients would be discarded, and tracing their backward pass is a third of the step's trace."""
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  weight = batch["weight"]
  real_examples = weight > 0 if padded_batches else None

  def weighted_mean(values: jax.Array) -> jax.Array:
    return (values * weight).sum() / weight.sum()

  def loss_fn(trained, fixed):
    logits, updates = model.apply(
      {"params": {**trained, **fixed}, "batch_stats": state.batch_stats},
      batch["image"],
      train=True,
      real_examples=real_examples,
      mutable=["batch_stats"],
      rngs={"dropout": dropout_rng},
    )
    loss = losses.segmentation_loss(logits, batch["mask"], class_weights=class_weights, dice_weight=dice_weight)
    return weighted_mean(loss), (logits, updates["batch_stats"])

  fixed = {} if train_encoder else {train_state.ENCODER: state.params[train_state.ENCODER]}
  trained = {name: subtree for name, subtree in state.params.items() if name not in fixed}
  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained, fixed)
  grads = {**grads, **jax.tree.map(jnp.zeros_like, fixed)}
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  state = state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), batch_stats=batch_stats, opt_state=opt_state
  )
  pixel_accuracy = weighted_mean((logits.argmax(-1) == batch["mask"]).mean(axis=(1, 2)))
  return state, {"loss": loss, "pixel_accuracy": pixel_accuracy}


def make_train_fn(
  config: ml_collections.ConfigDict,
  model,
  tx: optax.GradientTransformation,
  mesh: jax.sharding.Mesh,
  *,
  train_encoder: bool,
):
  """The jitted train step: state replicated and donated, batch split over the data axis. `train_encoder` is the
  phase `tx` was made for (`train_state.make_optimizer`)."""
  return jax.jit(
    functools.partial(
      train_step,
      model=model,
      tx=tx,
      class_weights=tuple(config.class_weights),
      dice_weight=config.dice_weight,
      padded_batches=not config.data.drop_remainder,
      train_encoder=train_encoder,
    ),
    in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
    out_shardings=sharding.replicated(mesh),
    donate_argnums=0,
  )


def compiler_options(platform: str, train_encoder: bool) -> dict[str, str]:
  """XLA options for a train step compiled for `platform`. On the CPU backend the step that trains the encoder is
  scheduled for memory: it keeps about 30% fewer bytes of activations alive for the backward pass than XLA's default
  schedule, at the same speed; the frozen-encoder step, whose backward pass stops at the decoder, keeps the default,
  which holds less there (the figures in bench/README.md)."""
  if platform == "cpu" and train_encoder:
    return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
  return {}


class DivergedError(errors.UserError, FloatingPointError):
  """The loss became NaN or infinite; the run stopped before saving the diverged state."""


def _check_finite(step_metrics: list[tuple[int, dict[str, np.ndarray]]], manager) -> None:
  """Stops the run on the first NaN/inf loss, before anything saves the diverged state."""
  for step, values in step_metrics:
    if not np.isfinite(values["loss"]):
      raise DivergedError(
        f"The training loss is {values['loss']} at step {step}: the run diverged and stops here. The last good "
        f"checkpoint (step {manager.latest_step()}) in {manager.directory} is intact. Lower "
        f"config.learning_rate or set config.grad_clip_norm, and train in a fresh --workdir (resuming this one "
        f"starts from that checkpoint)."
      )


def _derived_steps(config: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
  """num_train_steps, log, eval and checkpoint intervals with the -1 ("derive it") defaults resolved."""
  steps_per_epoch = data.steps_per_epoch(config.data, global_batch_size=config.batch_size)
  num_train_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  checkpoint_every = config.checkpoint_every_steps if config.checkpoint_every_steps > 0 else steps_per_epoch
  return num_train_steps, config.log_every_steps, eval_every, checkpoint_every


def validate(config: ml_collections.ConfigDict) -> None:
  """Config values that cannot work fail here, before any data is read or anything is written."""
  num_classes = config.model.num_classes
  if config.class_weights and len(config.class_weights) != num_classes:
    raise errors.ConfigError(
      f"config.class_weights={tuple(config.class_weights)} has {len(config.class_weights)} values but "
      f"config.model.num_classes={num_classes}: give one weight per class, or () for uniform."
    )
  if config.batch_size <= 0:
    raise errors.ConfigError(f"config.batch_size={config.batch_size} must be positive.")
  size = config.data.image_size
  if size <= 0 or size % INPUT_MULTIPLE:
    lower = max(INPUT_MULTIPLE, size // INPUT_MULTIPLE * INPUT_MULTIPLE)
    raise errors.ConfigError(
      f"config.data.image_size={size} must be a positive multiple of {INPUT_MULTIPLE} (the "
      f"encoder's output stride), e.g. {lower} or {lower + INPUT_MULTIPLE}."
    )
  derived = {
    "num_train_steps": "num_epochs x steps per epoch",
    "eval_every_steps": "once per epoch",
    "checkpoint_every_steps": "once per epoch",
  }
  for field, meaning in derived.items():
    if config[field] == 0 or config[field] < -1:
      raise errors.ConfigError(
        f"config.{field}={config[field]} must be a positive number of steps, or -1 for {meaning}."
      )
  if config.num_train_steps == -1 and config.num_epochs <= 0:
    raise errors.ConfigError(f"config.num_epochs={config.num_epochs} must be positive (or set config.num_train_steps).")
  for field in ("log_every_steps", "max_to_keep"):
    if config[field] <= 0:
      raise errors.ConfigError(f"config.{field}={config[field]} must be positive.")
  check_test_time_scales(config.eval_scales)


def _check_writable(workdir: str) -> None:
  """A workdir that cannot be written fails before training, not at the first checkpoint minutes later."""
  if jax.process_index() != 0:
    return
  probe = epath.Path(workdir) / ".write_test"
  try:
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as error:
    raise errors.ConfigError(
      f"Cannot write to the workdir {workdir}: {error.strerror or error}. Pass a --workdir you can write to."
    ) from None


def divergence_threshold(config: ml_collections.ConfigDict) -> float:
  """A loss above 10x that of predicting every class with equal probability: the model is far worse than guessing."""
  class_weight = max(config.class_weights, default=1.0)
  return 10.0 * (math.log(config.model.num_classes) * class_weight + config.dice_weight)


class _DivergenceWarning:
  """Warns once per split when the loss is finite but far above chance (a learning rate far too high)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._threshold = divergence_threshold(config)
    self._learning_rate = config.learning_rate
    self._warned: set[str] = set()

  def check(self, split: str, step: int, loss: float) -> None:
    if loss > self._threshold and split not in self._warned:
      self._warned.add(split)
      logging.warning(
        "The %s loss is %.4g at step %d, more than 10x a uniform guess's: the run looks like it is "
        "diverging. Lower config.learning_rate (now %g) or set config.grad_clip_norm.",
        split,
        loss,
        step,
        self._learning_rate,
      )


def _start_message(directory: epath.Path, start_step: int, interrupted: list[str], unreadable: list[int]) -> str:
  """Which step the run starts from, and why."""
  notes = []
  if unreadable:
    notes.append(f"the unreadable checkpoint(s) of step(s) {unreadable} were moved aside")
  if interrupted:
    notes.append(f"the interrupted save(s) {interrupted} of an earlier run were removed")
  why = f" ({'; '.join(notes)})" if notes else ""
  if start_step:
    return f"Resumed from {directory} at step {start_step}, its newest readable checkpoint{why}."
  return f"Starting at step 0: {directory} holds no complete checkpoint{why}."


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir`'s latest readable checkpoint if any) and returns the last eval's metrics.

  Raises `checkpointing.Preempted` after saving when SIGTERM arrives, and ConfigError (before writing anything) for
  a config that cannot work or that would resume the workdir's checkpoints as another model.
  """
  workdir = paths.resolve(workdir)
  validate(config)
  data.check_global_batch_size(config.batch_size)
  mesh = sharding.make_mesh()
  is_main = jax.process_index() == 0
  if is_main:
    logging.info("Run: %s", distributed.describe_run(mesh, config.batch_size))
    logging.info("Config:\n%s", config)
  num_train_steps, log_every, eval_every, checkpoint_every = _derived_steps(config)
  checkpoint_dir = epath.Path(workdir) / checkpointing.CHECKPOINT_DIR
  _check_writable(workdir)
  checkpointing.record_config(workdir, config, has_checkpoints=bool(checkpointing.complete_steps(checkpoint_dir)))
  interrupted = checkpointing.remove_interrupted_saves(checkpoint_dir)

  # Model and optimizers: one per phase (the encoder frozen, then trained), chosen by the step alone.
  model = train_state.create_model(config.model, sharding.platform(mesh))
  phases = {train_state.encoder_trains(config, 0), train_state.encoder_trains(config, num_train_steps)}
  optimizers = {trains: train_state.make_optimizer(config, num_train_steps, train_encoder=trains) for trains in phases}
  train_fns = {
    trains: make_train_fn(config, model, tx, mesh, train_encoder=trains) for trains, tx in optimizers.items()
  }
  evaluator = evaluation.Evaluator(config, model, mesh)
  replicated = sharding.replicated(mesh)

  preempted_at = 0
  with contextlib.ExitStack() as stack:
    manager = stack.enter_context(
      checkpointing.closing(checkpointing.make_manager(workdir, max_to_keep=config.max_to_keep))
    )
    # Restore the newest readable checkpoint, or start fresh (loading pretrained encoder weights only then).
    start_step, unreadable = 0, []
    if manager.all_steps():

      def set_aside(step: int) -> None:
        unreadable.append(step)
        checkpointing.set_aside(manager, step)

      start_step, state = checkpointing.restore_newest_readable(
        manager,
        lambda step: train_state.abstract_state(
          config, model, optimizers[train_state.encoder_trains(config, step)], mesh
        ),
        on_unreadable=set_aside,
      )
    else:
      state = train_state.jit_init_fn(config, model, optimizers[train_state.encoder_trains(config, 0)], mesh)(
        train_state.load_encoder_variables(config)
      )
    logging.info(_start_message(manager.directory, start_step, interrupted, unreadable))

    train_iter = data.train_batches(
      config.data, global_batch_size=config.batch_size, seed=config.seed, start_step=start_step
    )
    writer = stack.enter_context(contextlib.closing(metric_writers.MetricWriter(workdir, enabled=is_main)))
    preemption = stack.enter_context(contextlib.closing(checkpointing.PreemptionNotice(manager)))
    progress = stack.enter_context(
      tqdm(total=num_train_steps, initial=start_step, desc="train", unit="step", disable=not is_main)
    )
    pending: list[tuple[int, dict[str, jax.Array]]] = []  # Train metrics not yet checked, still on device.
    eval_metrics: dict[str, Any] = {}
    throughput = metric_writers.Throughput(start_step, config.batch_size)
    divergence = _DivergenceWarning(config)
    # Each phase's train step, compiled with its XLA options when the phase first runs in this process, and the host
    # heap its temporary buffers come from.
    compiled: dict[bool, tuple[Any, host_memory.StepHeap]] = {}
    for step in range(start_step + 1, num_train_steps + 1):
      trains = train_state.encoder_trains(config, step - 1)
      batch = sharding.shard_batch(next(train_iter), mesh)
      if trains not in compiled:
        program = train_fns[trains].lower(state, batch).compile(compiler_options(sharding.platform(mesh), trains))
        compiled[trains] = program, host_memory.StepHeap.of(program)
      program, heap = compiled[trains]
      heap.before_step()
      state, step_metrics = program(state, batch)
      if config.model.freeze_encoder and step == config.unfreeze_at_step:
        # Switch right after the step, so that a checkpoint of this step already has the unfrozen structure.
        state = jax.jit(
          functools.partial(train_state.unfreeze_encoder, tx=optimizers[True]),
          out_shardings=replicated,
          donate_argnums=0,
        )(state)
        logging.info(
          "Step %d: the encoder trains from now on, at learning rate %g.", step, config.encoder_learning_rate
        )
      pending.append((step, step_metrics))
      progress.update()
      is_last = step == num_train_steps
      preempted = preemption.reached(step)
      log_now = step % log_every == 0 or is_last
      eval_now = (step % eval_every == 0 or is_last) and not preempted  # A preempted run saves and leaves.
      # A checkpoint at every eval too, so that the best one by mean IoU can be kept.
      save_now = step % checkpoint_every == 0 or is_last or eval_now or preempted
      if not (log_now or save_now):
        continue  # Nothing leaves the device: on accelerators the next steps are dispatched while this one runs.

      fetched = jax.device_get(pending)
      _check_finite(fetched, manager)  # Before anything is saved.
      if log_now:
        train_metrics = {
          name: float(np.mean([values[name] for _, values in fetched])) for name in ("loss", "pixel_accuracy")
        }
        writer.write(step, "train", train_metrics | {"images_per_second": throughput.images_per_second(step)})
        divergence.check("train", step, train_metrics["loss"])
        pending = []
      step_eval: dict[str, Any] | None = None
      if eval_now:
        result = evaluator.run(state)
        step_eval = result.metrics
        writer.write(step, "eval", step_eval)
        divergence.check("eval", step, step_eval["loss"])
        evaluation.write_predictions(result, config, str(epath.Path(workdir) / "predictions" / f"step_{step:06d}.png"))
        eval_metrics = step_eval
      if save_now:
        checkpointing.save(manager, step, state, metrics=step_eval)
      if eval_now or save_now:
        host_memory.release_free_memory()  # Their buffers, which the train step does not reuse (a split: StepHeap).
        throughput.restart(step)  # Neither eval nor saving is training time.
      if preempted:
        preempted_at = step
        break
  if preempted_at:
    raise checkpointing.Preempted(preempted_at, checkpoint_dir)
  return eval_metrics
