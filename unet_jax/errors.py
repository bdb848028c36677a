"""Errors a user can fix: each message names the problem, the value, and what to change.

The command-line entry points (`unet_jax.cli`) print a `UserError` alone, without a traceback, and exit non-zero;
any other exception is a bug and keeps its traceback. The subclasses also derive from the built-in exception a
caller of the Python API would catch (`ValueError`, `FileNotFoundError`).
"""


class UserError(Exception):
  """Bad input (a config value, a path, a data file, a workdir) whose message says how to fix it."""


class ConfigError(UserError, ValueError):
  """A config value (or combination of values) that cannot work, found before any work starts."""


class InputNotFoundError(UserError, FileNotFoundError):
  """A path the command was given does not exist, or holds nothing it can use."""
