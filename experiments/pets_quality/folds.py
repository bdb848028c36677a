"""Writes the seeded validation folds of pets_sample's trainval list that configs/pets_sample.py:valK trains on.

Recipes are chosen on a fifth of the official `trainval` list, never on `test`. Each breed's images are permuted
with a fixed seed and cut into five folds of 20% (so the three breeds keep their 1/3 shares in every part); fold K
holds out the K-th fifth. Five folds rather than one split because 60 images cannot resolve a 0.005 difference in
mean IoU: a second fold is a second, disjoint look. Committed under configs/pets_sample_split/foldK/ so every run
reads the same 240 train / 60 validation stems (fold 0 is `:val`).

  python experiments/pets_quality/folds.py [TRAINVAL]   # rewrites configs/pets_sample_split/fold{0..4}/ identically

TRAINVAL defaults to the copy beside the repository, ../shared/data/pets_sample/annotations/trainval.txt.
"""

import collections
import pathlib
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
LOCAL_TRAINVAL = REPO_ROOT.parent / "shared" / "data" / "pets_sample" / "annotations" / "trainval.txt"
OUT_DIR = REPO_ROOT / "configs" / "pets_sample_split"
NUM_FOLDS = 5
SEED = 0


def split_folds(lines: list[str], num_folds: int, seed: int) -> list[tuple[list[str], list[str]]]:
  """(train, val) lines per fold; per breed (the line's CLASS-ID) a seeded permutation is cut into `num_folds`
  parts and fold K's val is every breed's K-th part. The folds' vals are disjoint and cover every line. Order kept."""
  by_breed = collections.defaultdict(list)
  for index, line in enumerate(lines):
    by_breed[line.split()[1]].append(index)
  rng = np.random.default_rng(seed)
  fold_of = {}
  for breed in sorted(by_breed):
    for part, indices in enumerate(np.array_split(rng.permutation(by_breed[breed]), num_folds)):
      fold_of.update((int(i), part) for i in indices)
  return [
    (
      [line for i, line in enumerate(lines) if fold_of[i] != fold],
      [line for i, line in enumerate(lines) if fold_of[i] == fold],
    )
    for fold in range(num_folds)
  ]


def main(trainval: pathlib.Path = LOCAL_TRAINVAL) -> None:
  lines = [line for line in trainval.read_text().splitlines() if line.strip() and not line.startswith("#")]
  for fold, (train, val) in enumerate(split_folds(lines, NUM_FOLDS, SEED)):
    fold_dir = OUT_DIR / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("val", val)):
      (fold_dir / f"{name}.txt").write_text("\n".join(part) + "\n")
    print(f"fold {fold}: {len(train)} train / {len(val)} val stems from {trainval} -> {fold_dir}")


if __name__ == "__main__":
  main(*map(pathlib.Path, sys.argv[1:]))
