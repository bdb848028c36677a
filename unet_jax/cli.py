"""What every command's entry point shares: flag parsing, user errors without a traceback, the user's paths, and the
compilation cache.

Each program defines its flags in its `__main__` block (library modules define none) and calls
`cli.run(main, name=..., define_flags=...)`. A problem the user can fix (a missing or broken config file, an override
of a field the config lacks, an `errors.UserError` from `main`) is one message and exit status 1; a bug, in this
package or in the code of a user's config file, keeps its traceback.
"""

import difflib
import importlib.machinery
import importlib.util
import logging as std_logging
import os
import re
import sys
import traceback
import types
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections.config_flags import config_flags as ml_config_flags
from ml_collections.config_flags import config_path

from unet_jax import errors, host_memory, paths

# The config fields that hold a path the user types: made absolute where they enter (`resolve_config_paths`).
PATH_FIELDS = ("data.data_dir", "data.folder.root", "model.pretrained")
# Values of a path field that name no file.
_NOT_PATHS = {"model.pretrained": ("imagenet",)}
_FLAG_ERROR = "FATAL Flags parsing error: "  # absl's prefix for every other mistake on the command line.


class _ConfigFileProblem(Exception):
  """Raised inside absl's parsing, which would wrap a ValueError and let others escape with absl's frames."""

  def __init__(self, message: str, is_bug: bool = False):
    super().__init__(message)
    self.is_bug = is_bug  # In the config file's own code: not a flag error, its traceback is the message.


def resolve_path_field(field: str, value: Any) -> Any:
  """`value` of the dotted config `field`, made absolute (`paths.resolve`) when the field holds a local path."""
  if field not in PATH_FIELDS or not isinstance(value, str) or value in _NOT_PATHS.get(field, ()):
    return value
  return paths.resolve(value)


def resolve_config_paths(config: ml_collections.ConfigDict) -> None:
  """Makes the `PATH_FIELDS` of `config` absolute in place, so that a relative path keeps meaning the directory the
  command ran in (Orbax, tfds and background threads resolve against whatever the process's directory is later)."""
  for field in PATH_FIELDS:
    *parents, name = field.split(".")
    holder = config
    for parent in parents:
      holder = holder.get(parent) if isinstance(holder, ml_collections.ConfigDict) else None
    if isinstance(holder, ml_collections.ConfigDict) and name in holder:
      resolved = resolve_path_field(field, holder[name])
      if resolved != holder[name]:
        holder[name] = resolved


def override_arguments(argv: Sequence[str], flag_name: str = "config") -> dict[str, str]:
  """{dotted field: the argument that sets it} for each `--<flag_name>.field=value` in `argv`, as ml_collections
  finds them (flag files expanded, `--noflag.field` included)."""
  try:
    argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
  except flags.Error:
    pass  # absl reports the unreadable flag file when it parses.
  pattern = re.compile(rf"-{{1,2}}(no)?{re.escape(flag_name)}\.")
  found: dict[str, str] = {}
  for argument in argv:
    if pattern.match(argument):
      field = argument.split("=", 1)[0].split(".", 1)[1]
      found.pop(field, None)
      found[field] = argument
  return found


def unknown_field_message(config: Any, field: str, flag_name: str = "config") -> str | None:
  """Why the dotted `field` is not in `config` (the missing part and the nearest existing name), or None when it
  is there, or its path is not one of plain names in ConfigDicts (ml_collections then judges it itself)."""
  try:
    parts = config_path.split(field)
  except ValueError:
    return None
  holder, prefix = config, []
  for part in parts:
    if not isinstance(holder, ml_collections.ConfigDict) or not isinstance(part, str):
      return None
    if part not in holder:
      missing = ".".join([*prefix, part])
      known = sorted(holder.keys())
      match = difflib.get_close_matches(part, known, n=1)
      if match:
        return f"the config has no field {missing!r}; did you mean {'.'.join([*prefix, match[0]])!r}?"
      where = f"{flag_name}.{'.'.join(prefix)}" if prefix else flag_name
      return f"the config has no field {missing!r} ({where} has {', '.join(known) or 'no fields'})."
    holder, prefix = holder[part], [*prefix, part]
  return None


def check_overrides(config: Any, argv: Sequence[str], flag_name: str = "config") -> None:
  """Raises `errors.ConfigError` naming the first `--<flag_name>.field` override in `argv` of a field that `config`
  does not have (ml_collections would raise a bare KeyError or AttributeError from deep inside absl)."""
  for field, argument in override_arguments(argv, flag_name).items():
    message = unknown_field_message(config, field, flag_name)
    if message:
      raise errors.ConfigError(f"{argument}: {message}")


def _exit_flag_error(message: str) -> NoReturn:
  sys.stderr.write(f"{_FLAG_ERROR}{message}\n")
  sys.exit(1)


def _bug_in_config(flag: str, error: Exception, filename: str) -> str:
  """The message for an exception the config file's own code raised: a bug there, so its traceback, from its first
  frame in `filename` on (the loader's and absl's frames above it are noise)."""
  frames = error.__traceback__
  while frames is not None and os.path.abspath(frames.tb_frame.f_code.co_filename) != filename:
    frames = frames.tb_next
  trace = "".join(traceback.format_exception(type(error), error, frames or error.__traceback__))
  return f"{flag}: the config file's code raised an error (a bug there, not a flag):\n{trace.rstrip()}"


def _load_module(name: str, filename: str) -> types.ModuleType:
  """The module of the Python source `filename` (any suffix, as ml_collections loads it), registered as `name`."""
  loader = importlib.machinery.SourceFileLoader(name, filename)
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
  sys.modules[name] = module  # Dataclasses and pickling in a config file look their module up.
  loader.exec_module(module)
  return module


class _ConfigFileParser(ml_config_flags.ConfigFileFlagParser):
  """ml_collections' config file parser, with errors that say which of the user's mistakes it is."""

  def __init__(self, name: str, lock_config: bool, argv: Sequence[str]):
    super().__init__(name, lock_config=lock_config)
    self._argv = list(argv)

  def parse(self, path: str) -> Any:
    filename, *arguments = path.split(":", 1)
    flag = f"--{self.name}={path}"
    if not os.path.isfile(filename):
      what = "is not a file" if os.path.isdir(filename) else "does not exist"
      raise _ConfigFileProblem(
        f"{flag}: the config file {filename!r} {what} (a relative path is relative to the "
        f"current directory, {os.getcwd()})."
      )
    filename = os.path.abspath(filename)
    try:
      module = _load_module(f"{self.name}_config", filename)
    except SyntaxError as error:
      raise _ConfigFileProblem(
        f"{flag}: a syntax error in the config file\n" + "".join(traceback.format_exception_only(error)).rstrip()
      ) from None
    except Exception as error:
      raise _ConfigFileProblem(_bug_in_config(flag, error, filename), is_bug=True) from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
      raise _ConfigFileProblem(f"{flag}: {filename} defines no get_config() function.")
    try:
      config = get_config(*arguments)
    except errors.UserError as error:
      raise _ConfigFileProblem(f"{flag}: {error}") from None
    except Exception as error:
      raise _ConfigFileProblem(_bug_in_config(flag, error, filename), is_bug=True) from None
    if config is None:
      raise _ConfigFileProblem(f"{flag}: get_config() in {filename} returned None; it must return the config.")
    if self._lock_config and callable(getattr(config, "lock", None)):
      config.lock()
      try:
        check_overrides(config, self._argv, self.name)
      except errors.ConfigError as error:
        raise _ConfigFileProblem(str(error)) from None
    return config


def _all_config_file_flags() -> list[flags.Flag]:
  """The `DEFINE_config_file` flags, each once (absl lists a flag under its name and its short name)."""
  found = {}
  for name in flags.FLAGS:
    flag = flags.FLAGS[name]
    if ml_config_flags.is_config_flag(flag) and isinstance(flag.parser, ml_config_flags.ConfigFileFlagParser):
      found[id(flag)] = flag
  return list(found.values())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser (for `app.run(..., flags_parser=parse_flags)`), with the config file's mistakes told apart.

  A missing config file, a syntax error in it, and an override of a field the config lacks are one message and
  exit status 1; an exception raised by the config file's own code is shown with its traceback from that file on.
  Afterwards the config's `PATH_FIELDS` are absolute.
  """
  file_flags = _all_config_file_flags()
  for flag in file_flags:
    flag.parser = _ConfigFileParser(flag.parser.name, getattr(flag.parser, "_lock_config", True), argv)
  try:
    remaining = app.parse_flags_with_usage(argv)
  except _ConfigFileProblem as problem:
    if problem.is_bug:
      sys.stderr.write(f"{problem}\n")
      sys.exit(1)
    _exit_flag_error(str(problem))
  for flag in file_flags:
    if isinstance(flag.value, ml_collections.ConfigDict):
      resolve_config_paths(flag.value)
  return remaining


def run(main: Callable[[list[str]], Any], *, name: str, define_flags: Callable[[], None] | None = None) -> None:
  """`app.run(main)` with `parse_flags`, after `define_flags()`.

  An `errors.UserError` from `main` prints `<name>: error: <message>` and exits 1, without a traceback; one from
  `define_flags` (where a `DEFINE_config_dict` flag applies its overrides: see `check_overrides`) is a flag error,
  reported as `parse_flags` reports one. absl's UsageError prints the usage as absl does; anything else is a bug and
  keeps its traceback. Every compile of `main` hands the compiler's memory back (`host_memory.release_after_compiles`).
  """
  if define_flags is not None:
    try:
      define_flags()
    except errors.UserError as error:
      _exit_flag_error(str(error))

  def main_reporting_user_errors(argv: list[str]) -> Any:
    host_memory.release_after_compiles()
    try:
      return main(argv)
    except errors.UserError as error:
      sys.stderr.write(f"{name}: error: {error}\n")
      sys.exit(1)

  app.run(main_reporting_user_errors, flags_parser=parse_flags)


def use_compilation_cache(directory: str) -> None:
  """JAX's persistent compilation cache in `directory` ("": none), unless $JAX_COMPILATION_CACHE_DIR names one: a
  second run of the same config (or a second predict or evaluate of its run) loads its compiled programs instead of
  compiling them again. Call it before the first compile. Every program is kept, not only those over JAX's one-second
  default: the eval step and inference compile in about a second on a CPU."""
  if directory and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", paths.resolve(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def quiet_library_logs() -> None:
  """Orbax and tfds narrate every save and dataset open at INFO; the console keeps the command's lines and warnings
  (less Orbax's note that a checkpoint between evals has no metrics: by design, see `checkpointing.make_manager`).
  Errors from Orbax and from the asyncio loops its threads run keep their first line only: the trainer reports a
  failed save itself, with its cause, once."""

  def keep(record: std_logging.LogRecord) -> bool:
    if any(source in record.pathname for source in ("/orbax/", "/asyncio/")) and record.levelno >= std_logging.ERROR:
      record.msg, record.args = record.getMessage().splitlines()[0], ()
      record.exc_info = record.exc_text = None
      return True
    if any(library in record.pathname for library in ("/orbax/", "/tensorflow_datasets/")):
      return record.levelno > std_logging.WARNING or (
        record.levelno == std_logging.WARNING and "did not provide metrics" not in record.getMessage()
      )
    return True

  logging.get_absl_handler().addFilter(keep)
