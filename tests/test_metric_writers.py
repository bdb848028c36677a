"""Throughput counts only the steps and the time since the last mark (an eval or a checkpoint is not training)."""

import pytest

from unet_jax import metric_writers


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def test_images_per_second_after_an_eval_between_log_steps_counts_only_the_steps_after_it():
  clock = FakeClock()
  throughput = metric_writers.Throughput(0, batch_size=64, clock=clock)
  clock.now = 10.0  # Steps 1-10, one second each.
  assert throughput.images_per_second(10) == pytest.approx(64.0)
  clock.now = 13.0  # Steps 11-13, then an eval and a checkpoint that take 100 s.
  clock.now = 113.0
  throughput.restart(13)
  clock.now = 120.0  # Steps 14-20.
  assert throughput.images_per_second(20) == pytest.approx(7 * 64 / 7.0)
