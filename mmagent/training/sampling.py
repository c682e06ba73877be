"""Reproducible training data: the random augmentation of every training item and the order of the
rows (shuffled, or length-grouped batches in shuffled order) are functions of (seed, epoch, row) alone."""

from __future__ import annotations

from collections.abc import Sequence
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


class LengthGroupedSampler(EpochShuffleSampler):
    """Batches of rows of similar length, the batches themselves in random order: each epoch a
    random permutation (a function of (seed, epoch), like :class:`EpochShuffleSampler`) is cut
    into groups of ``group_batches`` batches, each group is sorted by length and cut into batches,
    and the batches are shuffled. Every row appears once per epoch; a batch is padded to nearly
    its own rows' length instead of to the longest of a random batch (Banking77: a third of the
    tokens), while which rows meet in a batch and the batch order stay random, so the loss curve
    does not change in kind. The order depends only on (seed, epoch): ``--resume`` replays it.

    The indices are yielded flat; the DataLoader cuts them into ``batch_size`` runs, so the one
    short batch (``n % batch_size`` rows) is always yielded last, where the DataLoader (and
    ``drop_last``) expects it."""

    def __init__(self, lengths: Sequence[float], batch_size: int, seed: int, group_batches: int = 50) -> None:
        super().__init__(len(lengths), seed)
        if batch_size < 1 or group_batches < 1:
            raise ValueError(f"batch_size and group_batches must be >= 1, got {batch_size} and {group_batches}")
        self.lengths = [float(x) for x in lengths]
        self.batch_size, self.group_batches = batch_size, group_batches

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in the order they are yielded."""
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        size, group = self.batch_size, self.batch_size * self.group_batches
        full: list[list[int]] = []
        short: list[list[int]] = []
        for start in range(0, self.n, group):
            # sorted() is stable: equal lengths keep their random order
            ordered = sorted(perm[start : start + group], key=lambda i: -self.lengths[i])
            for k in range(0, len(ordered), size):
                (full if len(ordered[k : k + size]) == size else short).append(ordered[k : k + size])
        shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
        return shuffled + short  # only the last group can leave a short batch

    def __iter__(self):
        return iter([i for b in self.batches() for i in b])


def train_sampler(dataset: Any, batch_size: int, seed: int, group_by_length: bool) -> EpochShuffleSampler:
    """The training order: length-grouped batches when ``group_by_length`` and some input is padded
    per batch (``dataset.lengths()`` is not None: text, variable-length audio), else a plain
    shuffle (nothing to gain: images, numbers)."""
    lengths = dataset.lengths() if group_by_length else None
    if lengths is None:
        return EpochShuffleSampler(len(dataset), seed)
    return LengthGroupedSampler(lengths, batch_size, seed)
