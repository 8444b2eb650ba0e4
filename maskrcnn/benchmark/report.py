"""Plain-text tables for the results of `maskrcnn benchmark` (a dict, as written to JSON)."""

from __future__ import annotations

from typing import Optional


def _speedups(rows: list[dict], keys: tuple[str, ...]) -> dict[int, float]:
    """Row index -> torchvision's median time / this row's, torchvision taken at the same `keys`."""
    reference = {tuple(r[k] for k in keys): r["median_ms"] for r in rows if r["variant"] == "torchvision"}
    out = {}
    for i, r in enumerate(rows):
        tv = reference.get(tuple(r[k] for k in keys))
        if tv:
            out[i] = tv / r["median_ms"]
    return out


def _mem(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def _sci(value: Optional[float]) -> str:
    return "-" if value is None else format(value, ".1e")


def format_report(result: dict) -> str:
    lines = [
        f"device: {result['device']} ({result['device_type']}, {result['threads']} threads); "
        f"torch {result['torch']}, torchvision {result['torchvision']}"
        + (f", onnxruntime {result['onnxruntime']}" if result.get("onnxruntime") else "")
    ]
    inference = result.get("inference", [])
    if inference:
        settings = result["settings"]
        lines += [
            "",
            f"inference on {len(result['images'])} coco-mini val images "
            f"(shorter side {settings['min_size']}, max {settings['max_size']}); medians",
            f"{'variant':<22} {'dtype':<5} {'batch':>5} {'median ms':>10} {'img/s':>7} {'vs tv':>6} "
            f"{'peak MiB':>8} {'dets':>5} {'same n':>6} {'differ':>6} {'max|Δbox|':>9} {'max|Δscore|':>11}",
        ]
        speedups = _speedups(inference, ("dtype", "batch"))
        for i, r in enumerate(inference):
            same = r.get("detections_match_torchvision")
            lines.append(
                f"{r['variant']:<22} {r['dtype']:<5} {r['batch']:>5} {r['median_ms']:>10.1f} "
                f"{r['images_per_s']:>7.2f} {speedups.get(i, 0):>5.2f}x {_mem(r['peak_mem_mb']):>8} "
                f"{sum(r['detections']):>5} {'-' if same is None else ('yes' if same else 'NO'):>6} "
                f"{r.get('detections_differing', '-'):>6} "
                f"{_sci(r.get('max_box_diff')):>9} {_sci(r.get('max_score_diff')):>11}"
            )
    training = result.get("training", [])
    if training:
        lines += [
            "",
            "training: forward + backward + SGD step; medians",
            f"{'setting':<14} {'variant':<22} {'dtype':<5} {'batch':>5} {'median ms':>10} {'img/s':>7} "
            f"{'vs tv':>6} {'peak MiB':>8}",
        ]
        speedups = _speedups(training, ("setting", "dtype", "batch"))
        for i, r in enumerate(training):
            lines.append(
                f"{r['setting']:<14} {r['variant']:<22} {r['dtype']:<5} {r['batch']:>5} "
                f"{r['median_ms']:>10.1f} {r['images_per_s']:>7.2f} {speedups.get(i, 0):>5.2f}x "
                f"{_mem(r['peak_mem_mb']):>8}"
            )
    for setting, p in result.get("profile", {}).items():
        if p:
            share = 100.0 * p["roi_align_backward_ms"] / p["step_ms"] if p.get("step_ms") else 0.0
            lines.append(
                f"torchvision RoIAlign in its {setting} {p['dtype']} step: backward "
                f"{p['roi_align_backward_ms']:.1f} ms ({share:.0f}% of the step), "
                f"forward {p['roi_align_forward_ms']:.1f} ms (profiled)"
            )
    lines += [f"note: {note}" for note in result.get("notes", [])]
    if result.get("process_peak_rss_mb"):
        lines.append(f"process peak RSS: {result['process_peak_rss_mb']:.0f} MiB")
    return "\n".join(lines)
