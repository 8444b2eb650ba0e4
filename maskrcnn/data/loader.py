"""Batching and the training data loader.

Reproducibility contract: the batches of an epoch (which indices, in which order, on which rank)
and the random transforms applied to every sample are pure functions of (seed, epoch, rank,
world_size). Each sample's transforms draw from a private `torch.Generator` seeded from
(seed, epoch, index), so the result does not depend on the number of workers or on which worker
produced it. To resume in the middle of an epoch, call `set_epoch(epoch, skip_batches=n)`: the
first n batches are skipped without being loaded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from maskrcnn.data.dataset import InstanceDataset
from maskrcnn.structures import Sample, Targets

__all__ = [
    "AspectRatioGroupedBatchSampler",
    "Batch",
    "TrainLoader",
    "aspect_ratios",
    "build_train_loader",
    "collate",
    "mix_seed",
]


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (order matters)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint64)[0] >> 1)


class Batch(NamedTuple):
    """Collated batch; unpacks as `images, targets, samples`. Pinning pins images and targets."""

    images: list[Tensor]
    targets: list[Targets]
    samples: list[Sample]

    def pin_memory(self) -> Batch:
        images = [im.pin_memory() for im in self.images]
        return Batch(images, [t.pin_memory() for t in self.targets], self.samples)


def collate(samples: Sequence[Sample]) -> Batch:
    """Keep images at their own sizes: (list of (3, H, W) images, list of Targets, list of Sample)."""
    samples = list(samples)
    return Batch([s.image for s in samples], [s.targets for s in samples], samples)


def aspect_ratios(dataset: InstanceDataset) -> list[float]:
    """Width / height of every item, from `dataset.image_size(i)` (no image is decoded)."""
    sizes = [dataset.image_size(i) for i in range(len(dataset))]
    return [w / h for h, w in sizes]


class AspectRatioGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose images are all landscape (w >= h) or all portrait (w < h).

    Every epoch, all indices are permuted with a generator seeded by (seed, epoch); rank r takes
    every world_size-th index starting at r, then fills one bucket per orientation in that order and
    emits a bucket as a batch when it holds `batch_size` indices. With `drop_last=False` the partial
    buckets are emitted at the end. All ranks get the same number of batches per epoch (the minimum
    over ranks) so that distributed training never waits on a rank that ran out.
    `group=False` puts every image in one bucket (plain shuffled batches).
    """

    def __init__(
        self,
        aspect_ratios: Sequence[float],
        batch_size: int,
        *,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = True,
        group: bool = True,
    ) -> None:
        rank, world = shard
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad batch_size {batch_size} or shard {shard}")
        self.groups = [int(r < 1.0) if group else 0 for r in aspect_ratios]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world)
        self.drop_last = drop_last
        self.epoch = 0
        self.skip_batches = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch to iterate next, skipping its first `skip_batches` batches."""
        if epoch < 0 or skip_batches < 0:
            raise ValueError(f"epoch and skip_batches must be >= 0, got {epoch}, {skip_batches}")
        self.epoch, self.skip_batches = int(epoch), int(skip_batches)

    def _rank_batches(self, order: list[int], rank: int) -> list[list[int]]:
        buckets: dict[int, list[int]] = {}
        batches = []
        for idx in order[rank :: self.world_size]:
            bucket = buckets.setdefault(self.groups[idx], [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                batches.append(bucket)
                buckets[self.groups[idx]] = []
        if not self.drop_last:
            batches += [b for _, b in sorted(buckets.items()) if b]
        return batches

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch` for this rank (a pure function of seed, epoch and shard)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        order = torch.randperm(len(self.groups), generator=g).tolist()
        per_rank = [self._rank_batches(order, r) for r in range(self.world_size)]
        mine = per_rank[self.rank][: min(len(b) for b in per_rank)]
        self._cache = (epoch, mine)
        return mine

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)[self.skip_batches :]

    def __len__(self) -> int:
        return max(0, len(self.batches(self.epoch)) - self.skip_batches)


class _EpochTagged(Sampler[list[tuple[int, int]]]):
    """Turns index batches into (epoch, index) batches so workers can seed transforms."""

    def __init__(self, sampler: AspectRatioGroupedBatchSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        for batch in self.sampler:
            yield [(epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self.sampler)


class _TransformedDataset(Dataset):
    def __init__(self, dataset: Dataset, transforms: Optional[Callable[..., Sample]], seed: int) -> None:
        self.dataset = dataset
        self.transforms = transforms
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, index = key
        sample = self.dataset[index]
        if self.transforms is not None:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
            sample = self.transforms(sample, g)
        return sample


class TrainLoader:
    """Iterable over the `Batch`es of one epoch; call `set_epoch` before each epoch."""

    def __init__(self, dataloader: DataLoader, batch_sampler: AspectRatioGroupedBatchSampler) -> None:
        self.dataloader = dataloader
        self.batch_sampler = batch_sampler

    @property
    def epoch(self) -> int:
        return self.batch_sampler.epoch

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.batch_sampler.set_epoch(epoch, skip_batches)

    def batches_per_epoch(self, epoch: Optional[int] = None) -> int:
        """Number of batches of a whole epoch (ignoring skip_batches)."""
        return len(self.batch_sampler.batches(self.epoch if epoch is None else epoch))

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.dataloader)

    def __len__(self) -> int:
        return len(self.batch_sampler)


def build_train_loader(
    dataset: InstanceDataset,
    *,
    batch_size: int,
    transforms: Optional[Callable[..., Sample]] = None,
    num_workers: int = 2,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    aspect_ratio_grouping: bool = True,
    drop_last: bool = True,
    pin_memory: Optional[bool] = None,
    **dataloader_kwargs: Any,
) -> TrainLoader:
    """A `TrainLoader` yielding `Batch(images, targets, samples)` for rank `shard[0]` of `shard[1]`.

    `transforms(sample, generator)` is applied in the worker processes. Memory is pinned by default
    when CUDA is available. Extra keyword arguments go to `torch.utils.data.DataLoader`.
    """
    ratios = aspect_ratios(dataset) if aspect_ratio_grouping else [1.0] * len(dataset)  # type: ignore[arg-type]
    sampler = AspectRatioGroupedBatchSampler(
        ratios, batch_size, seed=seed, shard=shard, drop_last=drop_last, group=aspect_ratio_grouping
    )
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    loader = DataLoader(
        _TransformedDataset(dataset, transforms, seed),
        batch_sampler=_EpochTagged(sampler),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
        **dataloader_kwargs,
    )
    return TrainLoader(loader, sampler)
