"""Disjoint task-seed ranges, so that no evaluated task was trained on.

Meta-training draws only from TRAIN_SEEDS (config seed s uses s·TRAIN_STRIDE + i); evaluation defaults to
EVAL_FIRST_SEED; baseline tuning and held-out logging during training use VALID_FIRST_SEED onwards.
The studies on real data (`metatele.studies`) seed run r with (r + 1)·54321, as the paper's code does
(`study_seeds`), and tune learning rates on STUDY_TUNE_FIRST_SEED onwards.
"""
from __future__ import annotations

__all__ = ["TRAIN_SEEDS", "EVAL_FIRST_SEED", "VALID_FIRST_SEED", "TRAIN_STRIDE", "MAX_SEED", "train_seeds",
           "overlaps_training", "overlaps_validation", "PAPER_SEED_STRIDE", "STUDY_TUNE_FIRST_SEED", "study_seeds"]

TRAIN_SEEDS = range(10**9)
EVAL_FIRST_SEED = 10**9
VALID_FIRST_SEED = 3 * 10**9
VALID_RANGE = range(VALID_FIRST_SEED, VALID_FIRST_SEED + 10**9)
TRAIN_STRIDE = 10**7
MAX_SEED = 2**63 - 1  # torch.Generator seeds are 64-bit
PAPER_SEED_STRIDE = 54321
STUDY_TUNE_FIRST_SEED = 10**6  # between 18·54321 and 19·54321: disjoint from the study seeds


def study_seeds(count: int, offset: int = 0) -> list[int]:
    """The studies' run seeds: (r + 1 + offset)·54321 for runs r = 0 … count−1."""
    return [(r + 1 + offset) * PAPER_SEED_STRIDE for r in range(count)]


def train_seeds(seed: int, start: int, count: int) -> list[int]:
    """Training task seeds for trajectories start..start+count−1 of a run with config seed `seed`."""
    first = seed * TRAIN_STRIDE + start
    if seed < 0 or start < 0 or start + count > TRAIN_STRIDE or first + count > TRAIN_SEEDS.stop:
        raise ValueError(f"config seed must be in [0, {TRAIN_SEEDS.stop // TRAIN_STRIDE}) and trajectories "
                         f"≤ {TRAIN_STRIDE}")
    return list(range(first, first + count))


def overlaps_training(first_seed: int, count: int) -> bool:
    return first_seed < TRAIN_SEEDS.stop and first_seed + count > TRAIN_SEEDS.start


def overlaps_validation(first_seed: int, count: int) -> bool:
    return first_seed < VALID_RANGE.stop and first_seed + count > VALID_RANGE.start
