"""Paths as the user typed them -> the form every library accepts.

Orbax (and anything a background thread opens later) needs absolute local paths, and a path relative to the
directory the user ran the command from must keep meaning that directory. So every path a user passes (workdirs,
data roots, weights, outputs) is resolved once, where it enters: local paths become absolute (`~` expanded),
URLs such as `gs://bucket/run` stay as they are.
"""

import os


def resolve(path: str | os.PathLike) -> str:
  """An absolute local path, or `path` unchanged when it is a URL (`scheme://...`) or empty."""
  text = os.fspath(path)
  if not text or "://" in text:
    return text
  return os.path.abspath(os.path.expanduser(text))
