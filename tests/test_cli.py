"""The entry points' errors, through the real commands: a user's mistake is one message and exit status 1, without a
traceback; a bug (in a config file's own code, or in a command) keeps its traceback; the user's paths become
absolute where they enter."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import pytest

from unet_jax import cli, default_config, errors

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {
  **os.environ,
  "JAX_PLATFORMS": "cpu",
  "TF_CPP_MIN_LOG_LEVEL": "2",
  "CUDA_VISIBLE_DEVICES": "",
  "PYTHONPATH": str(REPO_ROOT),
}


def _run(*command: str, cwd: pathlib.Path = REPO_ROOT) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *command], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


def _summary(*flags_: str) -> subprocess.CompletedProcess:
  """The cheapest command that loads a config: it needs no data and no weights."""
  return _run("-m", "unet_jax.summary", *flags_)


def _config_file(tmp_path: pathlib.Path, body: str) -> pathlib.Path:
  path = tmp_path / "my_config.py"
  path.write_text(textwrap.dedent(body))
  return path


def test_an_override_of_a_missing_field_is_one_line_naming_the_field_and_the_nearest_one():
  result = _summary("--config=configs/synthetic.py", "--config.model.alfa=0.5")
  assert result.returncode == 1, result.stderr[-3000:]
  assert "--config.model.alfa=0.5: the config has no field 'model.alfa'; did you mean 'model.alpha'?" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
  "bug, line",
  [("config.model.alfa.beta = 1", "AttributeError"), ("config.batch_size = {'a': 1}['b']", "KeyError: 'b'")],
)
def test_a_bug_in_get_config_shows_its_traceback_in_the_users_file(tmp_path, bug, line):
  # The same exceptions a locked ConfigDict raises for an unknown override: they must not read as one.
  path = _config_file(
    tmp_path,
    f"""\
      from unet_jax import default_config


      def get_config():
        config = default_config.get_config()
        {bug}
        return config
      """,
  )
  result = _summary(f"--config={path}")
  assert result.returncode == 1
  assert "Traceback (most recent call last)" in result.stderr
  assert f'File "{path}", line 6, in get_config' in result.stderr and bug in result.stderr
  assert line in result.stderr
  assert "has no field" not in result.stderr and "absl" not in result.stderr


def test_a_syntax_error_is_a_short_message_with_file_line_and_text(tmp_path):
  path = _config_file(
    tmp_path,
    """\
      from unet_jax import default_config


      def get_config(:
        return default_config.get_config()
      """,
  )
  result = _summary(f"--config={path}")
  assert result.returncode == 1
  assert f'File "{path}", line 4' in result.stderr and "def get_config(:" in result.stderr
  assert "SyntaxError" in result.stderr and "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) <= 6, result.stderr


def test_a_missing_config_file_is_one_line_naming_the_path():
  result = _summary("--config=configs/nope.py", "--config.model.alpha=0.5")
  assert result.returncode == 1
  assert "the config file 'configs/nope.py' does not exist" in result.stderr
  assert f"relative to the current directory, {REPO_ROOT}" in result.stderr
  assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_parse_flags_makes_the_configs_paths_absolute_from_where_the_command_ran(tmp_path):
  script = textwrap.dedent("""\
      from absl import flags
      from ml_collections import config_flags
      from unet_jax import cli

      def main(argv):
        data, model = flags.FLAGS.config.data, flags.FLAGS.config.model
        print(data.data_dir, data.folder.root, model.pretrained, sep="\\n")

      cli.run(main, name="show", define_flags=lambda: config_flags.DEFINE_config_file("config", None, ""))
      """)
  result = _run(
    "-c",
    script,
    f"--config={REPO_ROOT / 'configs' / 'folder.py'}",
    "--config.data.data_dir=tfds",
    "--config.data.folder.root=../pets",
    "--config.model.pretrained=weights/encoder.h5",
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines() == [
    str(tmp_path / "tfds"),
    str(tmp_path.parent / "pets"),
    str(tmp_path / "weights" / "encoder.h5"),
  ]


def test_run_prints_a_user_error_alone_and_keeps_a_bugs_traceback():
  script = textwrap.dedent("""\
      from absl import flags
      from unet_jax import cli, errors

      def main(argv):
        if flags.FLAGS.fail == "user":
          raise errors.InputNotFoundError("no such thing: look elsewhere")
        raise RuntimeError("a bug")

      cli.run(main, name="tool", define_flags=lambda: flags.DEFINE_string("fail", "user", ""))
      """)
  user = _run("-c", script)
  assert user.returncode == 1 and user.stderr == "tool: error: no such thing: look elsewhere\n"
  bug = _run("-c", script, "--fail=bug")
  assert bug.returncode == 1 and "Traceback" in bug.stderr and "RuntimeError: a bug" in bug.stderr


def test_evaluate_reports_an_unknown_override_before_ml_collections_raises():
  # Its --config is a DEFINE_config_dict, which applies the overrides as it is defined.
  result = _run("-m", "unet_jax.evaluate", "--workdir=runs/none", "--config.data.eval_splt=train")
  assert result.returncode == 1
  assert (
    "--config.data.eval_splt=train: the config has no field 'data.eval_splt'; did you mean 'data.eval_split'?"
    in result.stderr
  )
  assert "Traceback" not in result.stderr


def test_check_overrides_finds_the_first_missing_part_of_a_path():
  config = default_config.get_config()
  cli.check_overrides(config, ["prog", "--config.data.folder.root=x", "--noconfig.data.cache", "--workdir=w"])
  with pytest.raises(errors.ConfigError, match=r"--config.dta.image_size=64: .* no field 'dta'; did you mean 'data'"):
    cli.check_overrides(config, ["prog", "--config.dta.image_size=64"])
  with pytest.raises(errors.ConfigError, match=r"no field 'model.zzz' \(config.model has alpha, bn_momentum, "):
    cli.check_overrides(config, ["prog", "--config.model.zzz", "1"])


def test_resolve_config_paths_makes_local_paths_absolute_under_the_cwd(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = default_config.get_config()
  config.data.data_dir, config.data.folder.root, config.model.pretrained = "tfds", "../pets", "w/encoder.h5"
  config.lock()
  cli.resolve_config_paths(config)
  assert (config.data.data_dir, config.data.folder.root, config.model.pretrained) == (
    str(tmp_path / "tfds"),
    str(tmp_path.parent / "pets"),
    str(tmp_path / "w" / "encoder.h5"),
  )
  for pretrained in ("imagenet", "", "gs://bucket/encoder.h5"):
    config.data.data_dir, config.model.pretrained = "gs://bucket/tfds", pretrained
    cli.resolve_config_paths(config)
    assert (config.data.data_dir, config.model.pretrained) == ("gs://bucket/tfds", pretrained)
  assert cli.resolve_path_field("data.eval_split", "train") == "train"
  assert cli.resolve_path_field("data.folder.root", "pets") == str(tmp_path / "pets")


def test_the_compilation_cache_is_the_configs_unless_jax_is_given_one(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  before = jax.config.jax_compilation_cache_dir
  min_compile_time = jax.config.jax_persistent_cache_min_compile_time_secs
  try:
    cli.use_compilation_cache("")
    assert jax.config.jax_compilation_cache_dir == before
    assert jax.config.jax_persistent_cache_min_compile_time_secs == min_compile_time > 0
    cli.use_compilation_cache("xla")  # Relative to where the command runs, as the workdir is.
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0  # The sub-second eval step too.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "own"))
    cli.use_compilation_cache(str(tmp_path / "other"))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time)
