"""Reproducible training data: the random augmentation of every training item is a function of
(seed, epoch, row) alone."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Sampler


class SeededItems(Dataset):
    """Training items whose random augmentation comes from a generator seeded by (seed, epoch, row),
    not from the global RNG: the loader fetches ahead, so with a shared stream a resumed run (which
    fetches from the resume point on) would draw other crops and dropout masks than the
    uninterrupted run; seeded per item, results also do not depend on the number of loader workers."""

    def __init__(self, items: Dataset, seed: int) -> None:
        self.items, self.seed, self.epoch = items, seed, 0

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            return self.items[i]


class EpochShuffleSampler(Sampler[int]):
    """Random order that depends only on (seed, epoch): a resumed run replays the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n
