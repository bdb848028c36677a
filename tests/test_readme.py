"""README's commands are what a new user types: keep them equal to what CI runs."""

import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
  readme = (REPO_ROOT / "README.md").read_text()
  ci_lines = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()
  test_command = ci_lines[-1]
  assert "pytest" in test_command
  assert test_command in readme.splitlines(), f"README.md must show CI's test command verbatim: {test_command!r}"
