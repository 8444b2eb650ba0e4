"""Timing helpers for `maskrcnn benchmark` (maskrcnn.benchmark.speed): warm-up then timed calls (CUDA
events on the GPU, perf_counter on the CPU), rows of medians, detection comparison (boxes, scores), a
RoIAlign profile."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Optional

import torch
from torch import Tensor

from ..hardware import cpu_model


def autocast(device: torch.device, dtype: str) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def measure(
    fn: Callable[[Any], Any], inputs: Sequence[Any], *, runs: int, warmup: int, device: torch.device
) -> tuple[list[float], dict[int, Any], Optional[float]]:
    """Call fn on inputs[0], inputs[1], ... cyclically: `warmup` untimed calls, then `runs` timed ones.
    Returns times (ms), the first output for each input index, and the peak GPU memory (MiB)."""
    cuda = device.type == "cuda"
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, outputs = [], {}
    for r in range(runs):
        k = r % len(inputs)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn(inputs[k])
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            out = fn(inputs[k])
            times.append((time.perf_counter() - t0) * 1000.0)
        outputs.setdefault(k, out)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return times, outputs, peak


def timing_row(name: str, dtype: str, batch: int, times: list[float], peak: Optional[float]) -> dict:
    median = statistics.median(times)
    return {
        "variant": name,
        "dtype": dtype,
        "batch": batch,
        "median_ms": median,
        "images_per_s": batch * 1000.0 / median,
        "runs": len(times),
        "times_ms": times,
        "peak_mem_mb": peak,
    }


def compare(outputs: dict[int, list], reference: dict[int, list], tolerance: float = 0.01) -> dict:
    """Detections of a variant against torchvision's, image by image, ignoring their order (tied
    scores may sort differently). `detections_match_torchvision`: the same count on every image;
    `detections_differing`: detections with no box of the same label within `tolerance` pixels in
    the other set (the larger of the two directions, summed over images); `max_box_diff`: the largest
    distance (max over coordinates) from a box to the nearest box of the same label in the other set;
    `max_score_diff`: the largest score difference between a detection and that nearest box's, over
    the detections that have one within `tolerance`."""
    same, differing, worst, worst_score = True, 0, 0.0, 0.0
    for k in sorted(set(outputs) & set(reference)):
        for (boxes, labels, scores), (ref_boxes, ref_labels, ref_scores) in zip(outputs[k], reference[k]):
            same = same and len(boxes) == len(ref_boxes)
            (ours_to_ref, nearest), (ref_to_ours, _) = _nearest_boxes(boxes, labels, ref_boxes, ref_labels)
            differing += max(int((ours_to_ref > tolerance).sum()), int((ref_to_ours > tolerance).sum()))
            worst = max([worst, *ours_to_ref.tolist(), *ref_to_ours.tolist()])
            close = ours_to_ref <= tolerance
            gaps = (scores[close].float() - ref_scores[nearest[close]].float()).abs()
            worst_score = max([worst_score, *gaps.tolist()])
    return {
        "detections_match_torchvision": same,
        "detections_differing": differing,
        "max_box_diff": worst if worst < float("inf") else None,  # JSON has no infinity
        "max_score_diff": worst_score,
    }


def _nearest_boxes(
    boxes: Tensor, labels: Tensor, ref_boxes: Tensor, ref_labels: Tensor
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """For each box of each set, the Chebyshev distance to the nearest box of the same label in the
    other set and that box's index: ((D,), (D,)) for `boxes`, ((D_ref,), (D_ref,)) for `ref_boxes`."""
    # (D, 1, 4) - (1, D_ref, 4) -> (D, D_ref), infinite across labels
    dist = (boxes.float()[:, None] - ref_boxes.float()[None]).abs().amax(dim=-1)
    dist = torch.where(labels[:, None] == ref_labels[None], dist, torch.full_like(dist, float("inf")))
    if dist.numel() == 0:
        none = [(torch.full((n,), float("inf")), torch.zeros(n, dtype=torch.int64)) for n in dist.shape]
        return none[0], none[1]
    return dist.min(dim=1), dist.min(dim=0)


def profile_roi_align(step: Callable, batch: Any, device: torch.device, steps: int = 2) -> dict:
    """Time per step inside torchvision's RoIAlign forward and backward kernels (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(batch)
        if cuda:
            torch.cuda.synchronize(device)
    totals = {"roi_align_forward_ms": 0.0, "roi_align_backward_ms": 0.0}
    for event in prof.key_averages():
        key = {"torchvision::roi_align": "roi_align_forward_ms"}.get(event.key)
        key = key or {"torchvision::_roi_align_backward": "roi_align_backward_ms"}.get(event.key)
        if key:
            us = getattr(event, "device_time_total", 0.0) if cuda else event.cpu_time_total
            totals[key] += us / 1000.0 / steps
    return totals


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()
