"""Deterministic, resumable training data: the order and every augmentation are functions of keys, not state.

A training sample is asked for by a :class:`SampleKey` ``(index, epoch, seed)``; the dataset draws all its
randomness from :func:`key_rng` of that key. The shuffle order of a pass is a function of ``(seed, epoch)``
(:class:`KeyedSampler`), so neither the number of DataLoader workers, nor which worker makes a sample, nor a
restart changes a batch. :class:`ResumableLoader` counts the passes it has started and the batches it has
handed out; Lightning saves that ``state_dict`` in a checkpoint's loop state (its ``CombinedLoader`` keeps
the state of every loader with ``state_dict``/``load_state_dict``) and gives it back before iterating on
resume, so a run killed mid-epoch continues with the very batches it would have seen.

``epoch`` is the loader's own pass count, not the trainer's epoch: with ``CombinedLoader("max_size_cycle")``
the shorter loader makes several passes per trainer epoch, and each gets a new order and new augmentations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["SampleKey", "key_rng", "KeyedSampler", "ResumableLoader"]


class SampleKey(NamedTuple):
    """Which sample to make and with which randomness: dataset ``index`` in pass ``epoch`` of run ``seed``."""

    index: int
    epoch: int = 0
    seed: int = 0


def key_rng(key: int | SampleKey, stream: int) -> tuple[int, np.random.Generator]:
    """(index, generator) for a dataset item; a plain int index is pass 0 of seed 0.

    ``stream`` separates datasets (labelled crops vs. pairs) that share keys, so sample 3 of the source and
    sample 3 of the target do not draw the same numbers.
    """
    key = SampleKey(int(key)) if not isinstance(key, tuple) else SampleKey(*key)
    return key.index, np.random.default_rng([key.seed, key.epoch, key.index, stream])


class KeyedSampler(DistributedSampler):
    """Yields :class:`SampleKey` s: a ``(seed, epoch)`` permutation (or the identity), sharded over ranks.

    A ``DistributedSampler`` so that Lightning does not wrap it in its own under DDP: each rank takes every
    ``num_replicas``-th key of the pass, as torch's sampler does. The pass and the first position to yield are
    set by :class:`ResumableLoader` (:meth:`start_pass`); Lightning's ``set_epoch`` (the trainer's epoch) is
    not used, since a cycled loader makes several passes per trainer epoch.

    Args:
        dataset: the dataset (only its length is used).
        num_replicas, rank: the DDP world size and this process's global rank.
        shuffle: permute each pass (training) or keep the dataset order.
        seed: the run's data seed.
        drop_last: drop the tail that does not divide among ranks (else pad with repeated keys).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas, rank, shuffle, seed, drop_last)
        self.pass_index = 0
        self.skip = 0

    def start_pass(self, pass_index: int, skip: int = 0) -> None:
        """The next iteration is pass ``pass_index``, starting after its first ``skip`` keys (this rank's)."""
        self.pass_index, self.skip = pass_index, skip

    def __iter__(self) -> Iterator[SampleKey]:
        n = len(self.dataset)
        order = np.arange(n)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.pass_index]).permutation(n)
        if self.drop_last:
            order = order[: self.total_size]
        else:
            order = np.resize(order, self.total_size)  # pads by repeating from the start
        mine = order[self.rank : self.total_size : self.num_replicas]
        return iter([SampleKey(int(i), self.pass_index, self.seed) for i in mine[self.skip :]])


class ResumableLoader(DataLoader):
    """A training DataLoader over a :class:`KeyedSampler` whose position survives a checkpoint.

    ``state_dict`` = ``{"pass": pass being iterated, "batches": batches handed out in it}`` and the seed,
    world size and batch size it holds for (a checkpoint from another data configuration is refused).
    Lightning's training fetcher takes exactly one batch per step from a loader with a length (it prefetches
    only unsized ones), so at a checkpoint the count equals the steps taken in the pass. After
    :meth:`load_state_dict`, the next iteration resumes that pass after those batches (a finished pass
    resumes as the next one).

    Args:
        dataset: a dataset whose ``__getitem__`` takes :class:`SampleKey` s.
        batch_size: samples per batch.
        seed: the run's data seed.
        num_replicas, rank: DDP sharding (see :class:`KeyedSampler`).
        drop_last: drop the last incomplete batch.
        **kwargs: other DataLoader arguments (workers, collate_fn, ...); not ``sampler``/``shuffle``.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        sampler = KeyedSampler(dataset, num_replicas, rank, shuffle=True, seed=seed)
        # worker base seeds from a private generator: starting a pass never draws from the global RNG
        kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
        super().__init__(dataset, batch_size, sampler=sampler, drop_last=drop_last, **kwargs)
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self._pass, self._batches = -1, 0  # before the first pass
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        pass_index, skip = self._resume if self._resume is not None else (self._pass + 1, 0)
        self._resume = None
        self.sampler.start_pass(pass_index, skip * self.batch_size)
        self._pass, self._batches = pass_index, skip
        return self._counted(super().__iter__())

    def _counted(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        state = {"pass": self._pass, "batches": self._batches}
        return state | {"seed": self.seed, "num_replicas": self.num_replicas, "batch_size": self.batch_size}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        for name in ("seed", "num_replicas", "batch_size"):
            if state_dict.get(name, getattr(self, name)) != getattr(self, name):
                raise ValueError(
                    f"ResumableLoader: the checkpoint's data {name} is {state_dict[name]}, this run's "
                    f"{getattr(self, name)}; resuming would not replay the same batches"
                )
        pass_index, batches = int(state_dict["pass"]), int(state_dict["batches"])
        if pass_index < 0:  # saved before any batch
            pass_index, batches = 0, 0
        self._resume = (pass_index + 1, 0) if batches >= len(self) else (pass_index, batches)
