"""Train-step and inference throughput of the JAX U-Net beside the TF tutorial's Keras model, on this machine.

  python bench/train_step.py              # batch 8 and 64 at 128 px: frozen encoder, fully trainable, inference
  python bench/train_step.py --quick      # batch 8, two timed steps, no input pipeline: a smoke run (~3 min, 2 CPUs)
  python bench/train_step.py --profile    # also where one JAX step's time goes, per layer and per kind of op
  python bench/train_step.py --rounds=3 --modes=frozen --batch_sizes=64   # one ratio, robust to the machine's drift
  python bench/train_step.py --frameworks=jax --dtype=bfloat16 --batch_sizes=64,256   # e.g. on a GPU
  python bench/train_step.py --padded_batches --frameworks=jax --modes=frozen,trainable --batch_sizes=16 --rounds=5
      # what keeping each epoch's partial batch (data.drop_remainder=False) costs a step

Each figure (framework x mode x batch) runs in its own subprocess, so that its peak RSS, compile time and thread
pools are its own; JAX and Keras alternate, so that both see the same machine load, and a ratio line (JAX / Keras)
follows each pair (with `--rounds=N`, the ratio of the medians of N alternating measurements). The JAX side is
the product: the trainer's jitted step, `trainer.make_train_fn` (frozen encoder masked by the trainer's optimizer,
donated state, host memory as the train command sets it: `unet_jax.host_memory`), and the model as
`train_state.create_model` builds it. The Keras side is the tutorial's
model (tf.keras MobileNetV2 down stack + pix2pix up stack, random weights) trained by the fastest loop Keras offers
that does the same work: a `tf.function` step with a GradientTape and Adam (no XLA: `jit_compile` is slower on CPU).
Both run on fixed random batches already in memory; the input pipeline is measured on its own
(`bench/input_pipeline.py`) and reported beside the step, since it runs concurrently with training.

`--padded_batches` adds a second JAX train figure: the step as data.drop_remainder=False compiles it, with every
BatchNorm's batch statistics masked to the batch's real rows (the batch itself full), measured in turn with the
others, and a ratio line of its step time over the unmasked step's.

One JSON line per figure: images_per_s (batch / median step time), page_faults_per_step (minor faults: memory a step
touches fresh, see `--huge_pages`), first_step_s (trace + compile + first run; for JAX split into trace_s, lower_s,
compile_s, the rest being the run, with compile_cpu_s, the CPU seconds of XLA's compile on all its threads, and kernels,
the fusions it generated code for), gflop_per_step and gflop_per_s (XLA's flop count of the JAX step; the ratio line
prices both frameworks' images/s with it), init_s (building the model: JAX's jitted init, Keras' layers), peak_rss_mb,
peak_device_mb (GPU/TPU only), load_1m (the machine's load average at the end: other processes slow both sides alike).
The first line says what ran: CPU model and features, cores, date, versions; then each framework's matrix-product
GFLOP/s (`matmul_peak`), the ceiling of a step made of products. JAX reads JAX_COMPILATION_CACHE_DIR: set, a second run
of the same figure measures the first step from a warm persistent cache.
"""

import collections
import importlib.metadata
import json
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app, flags
from keras_tutorial import keras_tutorial_unet  # bench/ is this script's directory, so on sys.path.

from unet_jax import host_memory

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FRAMEWORKS = ("jax", "keras")
MODES = ("frozen", "trainable", "inference")

_QUICK = flags.DEFINE_bool("quick", False, "Short run: batch 8 only, 2 timed steps, no input pipeline figure.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["8", "64"], "Batch sizes to measure.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Image height and width.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed steps per figure, after two warm-up steps.")
_FRAMEWORKS = flags.DEFINE_list("frameworks", list(FRAMEWORKS), f"Any of {FRAMEWORKS}.")
_MODES = flags.DEFINE_list(
  "modes", list(MODES), f"Any of {MODES}: train steps with the encoder frozen or trainable, and forward-only inference."
)
_CONV_IMPL = flags.DEFINE_enum("conv_impl", "auto", ["auto", "xla", "cpu"], "The JAX model's conv_impl.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "The JAX model's compute dtype.")
_PRODUCT_DTYPE = flags.DEFINE_enum(
  "product_dtype", "", ["", "float32", "bfloat16"], "The JAX model's product_dtype ('': its compute dtype)."
)
_KERAS = flags.DEFINE_enum(
  "keras",
  "tf.keras",
  ["tf.keras", "tf_keras"],
  "The reference's Keras: tf.keras (Keras 3, what the tutorial runs on today's TF) or tf_keras (Keras 2).",
)
_MATMUL_PEAK = flags.DEFINE_bool(
  "matmul_peak", True, "First measure each framework's matrix-product GFLOP/s (float32; JAX also bf16 operands)."
)
_INPUT_PIPELINE = flags.DEFINE_bool("input_pipeline", True, "Also run bench/input_pipeline.py at the largest batch.")
_PROFILE = flags.DEFINE_bool("profile", False, "Trace one JAX step per figure and summarise where its time goes.")
_ROUNDS = flags.DEFINE_integer(
  "rounds",
  1,
  "Measure each JAX/Keras pair this many times, alternating, and take the "
  "ratio of the medians: this machine drifts between runs by more than most effects.",
)
_PADDED_BATCHES = flags.DEFINE_bool(
  "padded_batches",
  False,
  "Also time the JAX train step that masks BatchNorm to "
  "the real rows (data.drop_remainder=False), beside the unmasked one.",
)
_HUGE_PAGES = flags.DEFINE_enum(
  "huge_pages",
  "jax",
  ["jax", "both", "none"],
  "Whose figures run with glibc's huge pages for large blocks, as this package's commands restart themselves "
  "(unet_jax.host_memory): 'jax' measures each side as its users run it; 'both' and 'none' compare like with like.",
)
_WORKER = flags.DEFINE_string(
  "worker", "", "Internal: run one figure, 'framework:mode:batch[:padded]', in this process."
)


def emit(**fields: Any) -> None:
  print(json.dumps(fields), flush=True)


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB.


def process_cpu_s() -> float:
  """This process's CPU seconds so far, all threads (XLA compiles a program's kernels on several)."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def compiled_kernels(hlo: str) -> int:
  """The fusions of a compiled program that XLA generates code for (the library calls it makes aside): the count
  its compile time grows with."""
  return len(re.findall(r"kind=k(?:Loop|Input|Output)\b", hlo))


def time_steps(run_step, steps: int) -> tuple[float, float, float]:
  """(first call's seconds, median seconds of `steps` calls after one more warm-up, minor page faults per timed
  call: the memory each call touches for the first time since the kernel handed it out); each call blocks."""
  start = time.perf_counter()
  run_step()
  first = time.perf_counter() - start
  run_step()
  times = []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(steps):
    start = time.perf_counter()
    run_step()
    times.append(time.perf_counter() - start)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  return first, statistics.median(times), faults / steps


# --- JAX: the trainer's step on the product's model. ---


def jax_figure(mode: str, batch_size: int, padded: bool = False) -> dict[str, Any]:
  import jax
  import numpy as np

  from unet_jax import default_config, sharding, train_state, trainer

  host_memory.release_after_compiles()  # As every command does.
  if mode != "inference":
    host_memory.reuse_freed_blocks()  # As the train command sets it, before JAX starts its CPU client.
  config = default_config.get_config()
  config.model.update(
    pretrained="",
    freeze_encoder=mode != "trainable",
    dtype=_DTYPE.value,
    product_dtype=_PRODUCT_DTYPE.value,
    conv_impl=_CONV_IMPL.value,
  )
  config.data.update(image_size=_IMAGE_SIZE.value, drop_remainder=not padded)  # A padding stream masks BatchNorm.
  start = time.perf_counter()
  model = train_state.create_model(config.model)
  tx = train_state.make_optimizer(config, num_train_steps=1000, train_encoder=mode == "trainable")
  mesh = sharding.make_mesh()
  state = train_state.jit_init_fn(config, model, tx, mesh)()
  jax.block_until_ready(state)
  init = time.perf_counter() - start
  rng = np.random.default_rng(0)
  size = _IMAGE_SIZE.value
  batch = sharding.shard_batch(
    {
      "image": rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
      "mask": rng.integers(0, config.model.num_classes, (batch_size, size, size)).astype(np.int32),
      "weight": np.ones(batch_size, np.float32),
    },
    mesh,
  )

  if mode == "inference":
    step = jax.jit(
      lambda state, images: model.apply({"params": state.params, "batch_stats": state.batch_stats}, images, train=False)
    )
    args = [state, batch["image"]]
  else:
    step = trainer.make_train_fn(config, model, tx, mesh, train_encoder=mode == "trainable")
    args = [state, batch]
  # The first step's parts: tracing to a jaxpr, lowering to StableHLO, XLA's compile (or a persistent cache hit).
  parts = {}
  start = time.perf_counter()
  traced = step.trace(*args)
  parts["trace_s"], start = time.perf_counter() - start, time.perf_counter()
  lowered = traced.lower()
  parts["lower_s"], start = time.perf_counter() - start, time.perf_counter()
  cpu_start = process_cpu_s()
  compiled = lowered.compile(
    {} if mode == "inference" else trainer.compiler_options(sharding.platform(mesh), mode == "trainable")
  )
  parts["compile_s"] = time.perf_counter() - start
  parts["compile_cpu_s"] = process_cpu_s() - cpu_start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost  # A list of one on older jax.

  heap = host_memory.StepHeap.of(compiled)

  def run_step():
    if mode == "inference":
      jax.block_until_ready(compiled(*args))
    else:
      heap.before_step()  # As the trainer does.
      args[0], metrics = compiled(*args)
      jax.block_until_ready(metrics)

  first, median, faults = time_steps(run_step, _STEPS.value)
  first += parts["trace_s"] + parts["lower_s"] + parts["compile_s"]
  if _PROFILE.value:
    for row in profile_step(compiled, run_step):
      emit(figure="profile", framework="jax", mode=mode, batch=batch_size, **row)
  # GPUs and TPUs count the bytes their allocator held at most; the CPU backend keeps no such figure.
  peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  device = {"device": jax.devices()[0].device_kind, "peak_device_mb": peak and round(peak / 2**20)}
  parts = {name: round(seconds, 2) for name, seconds in parts.items()}
  return {
    "first_step_s": first,
    "median_step_s": median,
    "page_faults_per_step": round(faults),
    "gflop_per_step": round(cost.get("flops", 0.0) / 1e9, 1),
    "kernels": compiled_kernels(compiled.as_text()),
    "init_s": round(init, 2),
    **({} if mode == "inference" else {"heap_releases": heap.releases}),
    **parts,
    **device,
  }


def profile_step(compiled, run_step) -> list[dict[str, Any]]:
  """Where one step's time goes: the durations of the XLA ops in a `jax.profiler` trace, attributed to the Flax
  layer (and forward or backward pass) that the op's HLO metadata names; per stage, per kind of op, top layers."""
  import jax

  hlo = compiled.as_text()
  op_names = dict(re.findall(r'^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]+)"', hlo, re.MULTILINE))
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      run_step()
    (trace,) = pathlib.Path(trace_dir).rglob("*.xplane.pb")
    profile = jax.profiler.ProfileData.from_file(str(trace))
  by_layer, by_stage, by_kind = collections.Counter(), collections.Counter(), collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name not in op_names:
          continue  # Executor and thread-pool bookkeeping, not an op of the program.
        layer, stage, kind = attribute(op_names[event.name])
        ms = event.duration_ns / 1e6
        by_layer[layer] += ms
        by_stage[stage] += ms
        by_kind[kind] += ms
  total = sum(by_stage.values())
  rows = [{"stage": name, "ms": round(ms, 1), "share": round(ms / total, 3)} for name, ms in by_stage.most_common()]
  rows += [{"op_kind": name, "ms": round(ms, 1), "share": round(ms / total, 3)} for name, ms in by_kind.most_common()]
  rows += [{"layer": name, "ms": round(ms, 1), "share": round(ms / total, 3)} for name, ms in by_layer.most_common(15)]
  return rows


def attribute(op_name: str) -> tuple[str, str, str]:
  """("up_1/conv backward", "up_1 backward", "matmul") for "jit(train_step)/transpose(jvp(UNet))/up_1/conv/dot_general".

  Flax puts the module path in the op name; method scopes ("encoder._inverted_res_block") are dropped.
  """
  parts = op_name.split("/")[1:]
  primitive = parts[-1] if parts else op_name
  kind = (
    "matmul"
    if primitive.startswith("dot_general")
    else "reduction"
    if primitive.startswith(("reduce", "argmax"))
    else "data movement"
    if primitive
    in (
      "concatenate",
      "pad",
      "slice",
      "copy",
      "transpose",
      "broadcast_in_dim",
      "reshape",
      "dynamic_slice",
      "gather",
      "scatter-add",
      "select_n",
    )
    else "elementwise"
  )
  if not parts or "UNet" not in parts[0]:
    stage = "loss " if parts and "jvp(" in parts[0] else "optimizer/metrics "
    return stage + primitive, stage.strip(), kind
  direction = "backward" if parts[0].startswith("transpose(") else "forward"
  modules = [part for part in parts[1:-1] if "." not in part and "(" not in part]
  return f"{'/'.join(modules)} {direction}", f"{modules[0] if modules else 'UNet'} {direction}", kind


# --- Keras: the TF tutorial's model (bench/keras_tutorial.py) and its fastest equivalent loop. ---


def keras_figure(mode: str, batch_size: int) -> dict[str, Any]:
  import tensorflow as tf

  if _KERAS.value == "tf_keras":
    import tf_keras as keras
  else:
    keras = tf.keras

  start = time.perf_counter()
  model, down_stack = keras_tutorial_unet(keras, _IMAGE_SIZE.value)
  init = time.perf_counter() - start
  down_stack.trainable = mode == "trainable"  # The tutorial freezes it; Keras then runs its BatchNorm in inference.
  size = _IMAGE_SIZE.value
  images = tf.random.uniform((batch_size, size, size, 3), -1, 1, seed=0)
  masks = tf.random.uniform((batch_size, size, size), 0, 3, dtype=tf.int32, seed=1)
  if mode == "inference":
    predict = tf.function(lambda x: model(x, training=False))
    run_step = lambda: predict(images).numpy()
  else:
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.Adam()

    @tf.function
    def train_step(x, y):
      with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
      grads = tape.gradient(loss, model.trainable_variables)
      optimizer.apply_gradients(zip(grads, model.trainable_variables))
      return loss

    run_step = lambda: train_step(images, masks).numpy()
  first, median, faults = time_steps(run_step, _STEPS.value)
  return {
    "first_step_s": first,
    "median_step_s": median,
    "page_faults_per_step": round(faults),
    "init_s": round(init, 2),
    "device": "cpu",
  }


def matmul_peak(framework: str, size: int = 2048, calls: int = 10) -> list[dict[str, Any]]:
  """GFLOP/s of one [size, size] x [size, size] product, median of `calls`: what this CPU's matrix-product kernels
  reach in each framework (JAX: float32, and bf16 operands summed in float32 as `product_dtype` computes; TF's
  oneDNN: float32), the ceiling of steps whose time goes to products."""
  if framework == "jax":
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (size, size))
    products = {
      "float32": jax.jit(lambda a, b: a @ b),
      "bfloat16": jax.jit(
        lambda a, b: jnp.matmul(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
      ),
    }
    run = {dtype: (lambda f=f: jax.block_until_ready(f(x, x))) for dtype, f in products.items()}
  else:
    import tensorflow as tf

    x = tf.random.normal((size, size), seed=0)
    run = {"float32": lambda: tf.linalg.matmul(x, x).numpy()}
  rows = []
  for dtype, call in run.items():
    _, seconds, _ = time_steps(call, calls)
    rows.append({"dtype": dtype, "size": size, "gflop_per_s": round(2 * size**3 / seconds / 1e9, 1)})
  return rows


def run_worker(spec: str) -> None:
  if spec.startswith("matmul_peak:"):
    framework = spec.split(":")[1]
    for row in matmul_peak(framework):
      emit(figure="matmul_peak", framework=framework, **row, load_1m=round(os.getloadavg()[0], 2))
    return
  framework, mode, batch, *padded = spec.split(":")
  batch_size = int(batch)
  if framework == "jax":
    figure = jax_figure(mode, batch_size, padded=bool(padded))
    if mode != "inference":
      figure["padded_batches"] = bool(padded)
  else:
    figure = keras_figure(mode, batch_size)
  if figure.get("gflop_per_step"):
    figure["gflop_per_s"] = round(figure["gflop_per_step"] / figure["median_step_s"], 1)
  emit(
    figure="step" if mode == "inference" else "train_step",
    framework=framework,
    mode=mode,
    batch=batch_size,
    image_size=_IMAGE_SIZE.value,
    images_per_s=round(batch_size / figure.pop("median_step_s"), 2),
    first_step_s=round(figure.pop("first_step_s"), 2),
    peak_rss_mb=round(peak_rss_mb()),
    **figure,
    load_1m=round(os.getloadavg()[0], 2),
  )


# --- The driver: one subprocess per figure. ---


def subprocess_lines(command: list[str], framework: str = "") -> list[dict[str, Any]]:
  """Runs `command`, echoing and returning its JSON lines; a failure is reported as a line, not raised. A worker of
  `framework` runs with huge pages for large blocks where `--huge_pages` names it and this system gives them
  (`host_memory.tunables_with_huge_pages`)."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
  if framework in FRAMEWORKS and _HUGE_PAGES.value in (framework, "both"):
    tunables = host_memory.tunables_with_huge_pages(env, host_memory.glibc_version(), host_memory.thp_mode())
    env.update({"GLIBC_TUNABLES": tunables} if tunables else {})
  result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT)
  rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  for row in rows:
    print(json.dumps(row), flush=True)
  if result.returncode:
    emit(figure="error", command=" ".join(command[1:]), returncode=result.returncode, stderr_tail=result.stderr[-2000:])
  return rows


def median(rows: list[dict[str, Any]], key: str) -> float:
  return statistics.median(row[key] for row in rows)


def forwarded_flags() -> list[str]:
  return [
    f"--image_size={_IMAGE_SIZE.value}",
    f"--steps={_STEPS.value}",
    f"--conv_impl={_CONV_IMPL.value}",
    f"--dtype={_DTYPE.value}",
    f"--product_dtype={_PRODUCT_DTYPE.value}",
    f"--keras={_KERAS.value}",
    f"--profile={_PROFILE.value}",
  ]


def machine() -> dict[str, Any]:
  """What a figure was measured on: the CPU (model, the features that decide its matrix-product kernels, cores), the
  date, and the versions of both sides (read from the installed packages, importing neither)."""
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  text = cpuinfo.read_text() if cpuinfo.exists() else ""  # Linux only.
  fields = dict(re.findall(r"^(model name|cpu family|model|flags)\s*:\s*(.*)$", text, re.MULTILINE))
  cpu_flags = fields.get("flags", "").split()
  packages = ("jax", "jaxlib", "flax", "tensorflow", "keras")
  return {
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "cpu": fields.get("model name", "unknown"),
    "cpu_family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
    "cpu_features": [name for name in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if name in cpu_flags],
    "cpus": os.cpu_count(),
    "python": sys.version.split()[0],
    "glibc": host_memory.glibc_version(),
    "thp_mode": host_memory.thp_mode(),
    "huge_pages": _HUGE_PAGES.value,
    **{name: importlib.metadata.version(name) for name in packages},
  }


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; options go as --flag=value.")
  if _WORKER.value:
    run_worker(_WORKER.value)
    return
  for name, values, allowed in (("frameworks", _FRAMEWORKS.value, FRAMEWORKS), ("modes", _MODES.value, MODES)):
    if not set(values) <= set(allowed):
      raise app.UsageError(f"--{name}={','.join(values)}: each must be one of {allowed}.")
  if _PADDED_BATCHES.value and "jax" not in _FRAMEWORKS.value:
    raise app.UsageError("--padded_batches times a JAX train step: add jax to --frameworks.")
  if _QUICK.value:
    flags.FLAGS.batch_sizes, flags.FLAGS.steps, flags.FLAGS.input_pipeline = ["8"], 2, False
    flags.FLAGS.matmul_peak = False
  emit(figure="machine", **machine(), load_1m=round(os.getloadavg()[0], 2))
  if _MATMUL_PEAK.value:
    for framework in _FRAMEWORKS.value:
      subprocess_lines([sys.executable, __file__, f"--worker=matmul_peak:{framework}"], framework)
  for mode in _MODES.value:
    for batch in _BATCH_SIZES.value:
      variants = list(_FRAMEWORKS.value)
      if _PADDED_BATCHES.value and mode != "inference":  # Inference has no batch statistics to mask.
        variants.append("jax:padded")
      figures = collections.defaultdict(list)
      for _ in range(_ROUNDS.value):
        for variant in variants:
          framework, *padded = variant.split(":")
          rows = subprocess_lines(
            [sys.executable, __file__, f"--worker={':'.join([framework, mode, batch, *padded])}", *forwarded_flags()],
            framework,
          )
          figures[variant] += [row for row in rows if row["figure"] != "profile"][:1]
      if figures["jax"] and figures["keras"]:
        # Both models do the same work: XLA's count for the JAX step prices Keras' images/s too.
        gflop_per_image = median(figures["jax"], "gflop_per_step") / int(batch)
        emit(
          figure="ratio_jax_over_keras",
          mode=mode,
          batch=int(batch),
          rounds=_ROUNDS.value,
          **{
            field: round(median(figures["jax"], key) / median(figures["keras"], key), 2)
            for field, key in (
              ("images_per_s", "images_per_s"),
              ("first_step_s", "first_step_s"),
              ("init_s", "init_s"),
              ("peak_rss", "peak_rss_mb"),
            )
          },
          **{
            f"{framework}_gflop_per_s": round(gflop_per_image * median(figures[framework], "images_per_s"), 1)
            for framework in FRAMEWORKS
          },
        )
      if figures["jax"] and figures["jax:padded"]:
        emit(
          figure="ratio_padded_over_unpadded",
          mode=mode,
          batch=int(batch),
          rounds=_ROUNDS.value,
          step_s=round(median(figures["jax"], "images_per_s") / median(figures["jax:padded"], "images_per_s"), 3),
        )
  if _INPUT_PIPELINE.value:  # The train stream's images/s, to set beside the step's.
    subprocess_lines(
      [
        sys.executable,
        str(REPO_ROOT / "bench" / "input_pipeline.py"),
        f"--batch_size={max(map(int, _BATCH_SIZES.value))}",
        f"--image_size={_IMAGE_SIZE.value}",
        "--cached_epochs=1",
      ]
    )


if __name__ == "__main__":
  app.run(main)
