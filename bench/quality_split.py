"""Writes the seeded validation split of ../shared/data/pets_sample that configs/pets_sample.py:val trains on.

Recipes are chosen on a fifth of the official `trainval` list, never on `test`. The split is drawn per breed (so the
three breeds keep their 1/3 shares in both parts) with a fixed seed, and committed under configs/pets_sample_split/
so every run reads the same 240 train / 60 validation stems.

  python bench/quality_split.py   # rewrites configs/pets_sample_split/{train,val}.txt (identical output)
"""

import collections
import pathlib

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAINVAL = REPO_ROOT.parent / "shared" / "data" / "pets_sample" / "annotations" / "trainval.txt"
OUT_DIR = REPO_ROOT / "configs" / "pets_sample_split"
VAL_FRACTION = 0.2
SEED = 0


def split_lines(lines: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
  """(train, val) lines; per breed (the line's CLASS-ID) a seeded `val_fraction` goes to val. Order kept."""
  by_breed = collections.defaultdict(list)
  for index, line in enumerate(lines):
    by_breed[line.split()[1]].append(index)
  rng = np.random.default_rng(seed)
  val = set()
  for breed in sorted(by_breed):
    indices = by_breed[breed]
    val.update(rng.permutation(indices)[:round(len(indices) * val_fraction)].tolist())
  return ([line for i, line in enumerate(lines) if i not in val], [line for i, line in enumerate(lines) if i in val])


def main() -> None:
  lines = [line for line in TRAINVAL.read_text().splitlines() if line.strip() and not line.startswith("#")]
  train, val = split_lines(lines, VAL_FRACTION, SEED)
  OUT_DIR.mkdir(exist_ok=True)
  for name, part in (("train", train), ("val", val)):
    (OUT_DIR / f"{name}.txt").write_text("\n".join(part) + "\n")
  print(f"{len(train)} train / {len(val)} val stems from {TRAINVAL} -> {OUT_DIR}")


if __name__ == "__main__":
  main()
