"""Collation, aspect-ratio grouped batching, sharding and the reproducible train loader."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.data import (
    AspectRatioGroupedBatchSampler,
    Compose,
    HorizontalFlip,
    LargeScaleJitter,
    ShapesDataset,
    build_train_loader,
    collate,
)
from maskrcnn.data.loader import Batch


def test_collate() -> None:
    ds = ShapesDataset(3, seed=1)
    samples = [ds[i] for i in range(3)]
    images, targets, kept = collate(samples)
    assert [im.shape for im in images] == [(3, 128, 128)] * 3
    assert all(torch.equal(t.masks, s.targets.masks) for t, s in zip(targets, samples))
    assert kept == samples


def _ratios(n: int) -> list[float]:
    return [1.5 if i % 3 else 0.75 for i in range(n)]  # 2/3 landscape, 1/3 portrait


def test_batches_grouped_by_orientation_and_deterministic() -> None:
    ratios = _ratios(50)
    sampler = AspectRatioGroupedBatchSampler(ratios, 4, seed=7)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for b in batches:
        assert len(b) == 4 and len({ratios[i] >= 1 for i in b}) == 1
    assert len({i for b in batches for i in b}) == 4 * len(batches)  # no index twice
    again = AspectRatioGroupedBatchSampler(ratios, 4, seed=7)
    assert list(again) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches
    assert list(AspectRatioGroupedBatchSampler(ratios, 4, seed=8)) != batches
    # drop_last=False also yields the partial batches, still one orientation each: every index once.
    full = AspectRatioGroupedBatchSampler(ratios, 4, seed=7, drop_last=False)
    assert sorted(i for b in full for i in b) == list(range(50))
    assert all(len({ratios[i] >= 1 for i in b}) == 1 for b in full)


def test_skip_batches_resumes_mid_epoch() -> None:
    sampler = AspectRatioGroupedBatchSampler(_ratios(40), 2, seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, skip_batches=5)
    assert len(sampler) == len(whole) - 5 and list(sampler) == whole[5:]


def test_shards_are_disjoint_and_equal_length() -> None:
    ratios = _ratios(61)
    shards = [list(AspectRatioGroupedBatchSampler(ratios, 3, seed=0, shard=(r, 3))) for r in range(3)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) > 0
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen))


def test_train_loader_reproducible_across_workers_and_resume() -> None:
    ds = ShapesDataset(12, seed=9, image_size=(64, 80))
    transforms = Compose([HorizontalFlip(0.5), LargeScaleJitter(64, (0.5, 1.5))])
    kwargs = {"batch_size": 2, "transforms": transforms, "seed": 5}
    single = build_train_loader(ds, num_workers=0, **kwargs)
    multi = build_train_loader(ds, num_workers=2, **kwargs)
    assert len(single) == 6 and single.batches_per_epoch() == 6
    for epoch in (0, 1):
        single.set_epoch(epoch)
        multi.set_epoch(epoch)
        a, b = list(single), list(multi)
        assert len(a) == len(b) == 6
        for x, y in zip(a, b):
            assert isinstance(x, Batch)
            assert [s.image_id for s in x.samples] == [s.image_id for s in y.samples]
            # Workers run torch with 1 thread, the main process with several: bilinear resizing may
            # differ in the last float bit, nothing else.
            assert all(torch.allclose(i, j, rtol=0, atol=1e-6) for i, j in zip(x.images, y.images))
            assert all(torch.equal(t.masks, u.masks) for t, u in zip(x.targets, y.targets))
            assert all(torch.equal(t.boxes, u.boxes) for t, u in zip(x.targets, y.targets))
            assert all(im.shape == (3, 64, 64) for im in x.images)
        if epoch == 0:
            first_epoch = a
    # A new loader resumed at (epoch 0, batch 4) yields exactly the remaining batches.
    resumed = build_train_loader(ds, num_workers=0, **kwargs)
    resumed.set_epoch(0, skip_batches=4)
    rest = list(resumed)
    assert len(rest) == 2
    for x, y in zip(rest, first_epoch[4:]):
        assert all(torch.equal(i, j) for i, j in zip(x.images, y.images))
    # Epochs differ (order and augmentation).
    assert any(not torch.equal(x.images[0], y.images[0]) for x, y in zip(a, first_epoch))


# ---- shards: together they cover the unsharded order ----------------------------------------------


def _unsharded_order(n: int, seed: int, epoch: int) -> list[int]:
    """The epoch's permutation as one process sees it: batches of 1, no grouping, nothing dropped."""
    sampler = AspectRatioGroupedBatchSampler([1.0] * n, 1, seed=seed, group=False, drop_last=False)
    sampler.set_epoch(epoch)
    return [i for (i,) in sampler]


def _rank_streams(ratios: list[float], world: int, epoch: int, **kwargs) -> list[list[int]]:
    streams = []
    for rank in range(world):
        sampler = AspectRatioGroupedBatchSampler(ratios, 3, seed=11, shard=(rank, world), **kwargs)
        sampler.set_epoch(epoch)
        streams.append([i for batch in sampler for i in batch])
    return streams


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("epoch", [0, 4])
def test_shards_interleave_to_the_unsharded_order(world: int, epoch: int) -> None:
    # without grouping, rank r's k-th index is the unsharded order's (r + k * world)-th; every rank
    # gets m = min over ranks of (its share // batch size) batches: the remainder is the order's tail
    n, batch = 61, 3
    order = _unsharded_order(n, 11, epoch)
    assert sorted(order) == list(range(n))
    streams = _rank_streams([1.0] * n, world, epoch, group=False)
    m = min(len(order[r::world]) // batch for r in range(world))
    assert [len(s) for s in streams] == [m * batch] * world and m > 0
    for rank, stream in enumerate(streams):
        assert stream == order[rank::world][: m * batch]
    union = [i for s in streams for i in s]
    assert len(union) == len(set(union))  # disjoint
    assert sorted(union) == sorted(order[: m * batch * world])
    assert n - len(union) < batch * world  # the documented remainder: less than one batch per rank


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_grouped_shards_cover_the_order_less_the_remainder(world: int, drop_last: bool) -> None:
    n, batch = 50, 3
    ratios = _ratios(n)
    landscape = [r >= 1 for r in ratios]
    order = _unsharded_order(n, 11, 2)
    streams = _rank_streams(ratios, world, 2, drop_last=drop_last)
    union = [i for s in streams for i in s]
    assert len(union) == len(set(union))  # disjoint
    # each rank's full batches per orientation; all ranks are cut to the smallest count
    full = [
        sum(sum(landscape[i] == g for i in order[r::world]) // batch for g in (True, False))
        for r in range(world)
    ]
    if drop_last:
        assert len(union) == min(full) * batch * world
    for rank, stream in enumerate(streams):
        share = order[rank::world]
        assert set(stream) <= set(share)
        # per orientation, a rank takes its share in the unsharded order, up to where it stops
        for g in (True, False):
            taken = [i for i in stream if landscape[i] == g]
            assert taken == [i for i in share if landscape[i] == g][: len(taken)]
    # what no rank took: less than a batch per orientation per rank, plus the batches cut to match
    missing = n - len(union)
    cut = sum(f - min(full) for f in full) * batch
    assert missing <= world * 2 * (batch - 1) + cut
    assert len(union) >= n - world * 2 * (batch - 1) - cut > 0


def test_shards_are_a_pure_function_of_seed_and_epoch() -> None:
    ratios = _ratios(40)
    fresh = _rank_streams(ratios, 3, 5)
    # a sampler that iterated other epochs first, and one resumed there, give the same epoch 5
    for rank in range(3):
        sampler = AspectRatioGroupedBatchSampler(ratios, 3, seed=11, shard=(rank, 3))
        for epoch in (0, 7, 5):
            sampler.set_epoch(epoch)
            batches = list(sampler)
        assert [i for b in batches for i in b] == fresh[rank]
        sampler.set_epoch(5, skip_batches=2)
        assert [i for b in sampler for i in b] == fresh[rank][6:]
    assert _rank_streams(ratios, 3, 6) != fresh
    assert _unsharded_order(40, 11, 5) != _unsharded_order(40, 12, 5)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_loaders_yield_the_samples_of_the_unsharded_order(world: int) -> None:
    n = 14
    ds = ShapesDataset(n, seed=4, image_size=(32, 48))
    order = _unsharded_order(n, 5, 1)
    m = min(len(order[r::world]) // 2 for r in range(world))
    for rank in range(world):
        loader = build_train_loader(
            ds, batch_size=2, seed=5, num_workers=0, shard=(rank, world), aspect_ratio_grouping=False
        )
        loader.set_epoch(1)
        ids = [s.image_id for batch in loader for s in batch.samples]
        assert ids == order[rank::world][: 2 * m]
