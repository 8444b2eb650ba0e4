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
    if result.get("cpu"):
        flags = " ".join(result.get("cpu_flags", [])) or "none of avx2 / avx512_vnni / avx512_bf16 / amx"
        lines.append(f"cpu: {result['cpu']}; ISA: {flags}")
    if result.get("load_average_start"):
        end = result.get("load_average_end") or ["?"]
        lines.append(
            f"1-minute load average: {result['load_average_start'][0]:.2f} at the start, "
            f"{_num(end[0])} at the end"
        )
    inference = result.get("inference", [])
    if inference:
        settings = result["settings"]
        lines += [
            "",
            f"inference on {len(result['images'])} coco-mini val images "
            f"(shorter side {settings['min_size']}, max {settings['max_size']}); medians",
            f"{'variant':<22} {'prec.':<5} {'batch':>5} {'median ms':>10} {'img/s':>7} {'vs tv':>6} "
            f"{'peak MiB':>8} {'dets':>5} {'same n':>6} {'differ':>6} {'max|Δbox|':>9} {'max|Δscore|':>11}",
        ]
        speedups = _speedups(inference, ("dtype", "batch"))
        for i, r in enumerate(inference):
            same = r.get("detections_match_torchvision")
            lines.append(
                f"{r['variant']:<22} {r.get('precision', r['dtype']):<5} {r['batch']:>5} "
                f"{r['median_ms']:>10.1f} "
                f"{r['images_per_s']:>7.2f} {speedups.get(i, 0):>5.2f}x {_mem(r['peak_mem_mb']):>8} "
                f"{sum(r['detections']):>5} {'-' if same is None else ('yes' if same else 'NO'):>6} "
                f"{r.get('detections_differing', '-'):>6} "
                f"{_sci(r.get('max_box_diff')):>9} {_sci(r.get('max_score_diff')):>11}"
            )
    lines += _accuracy_lines(result.get("accuracy", []))
    lines += _summary_lines(inference, result.get("accuracy", []))
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


def _num(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def _ap(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _points(value: Optional[float]) -> str:
    return "" if value is None else f"{value:+.2f}"


def _accuracy_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "accuracy of each precision (AP at IoU .50:.95; change from eager fp32 in AP points)",
        f"{'model':<16} {'precision':<18} {'images':>6} {'box AP':>7} {'Δ':>6} {'mask AP':>7} {'Δ':>6} "
        f"{'eval s':>7}",
    ]
    for r in rows:
        lines.append(
            f"{r['model']:<16} {r['precision']:<18} {r['images']:>6} {_ap(r['box_AP']):>7} "
            f"{_points(r.get('box_AP_change')):>6} {_ap(r['mask_AP']):>7} "
            f"{_points(r.get('mask_AP_change')):>6} "
            f"{r['seconds']:>7.1f}"
            + (
                f"  (vs onnxruntime fp32: {_points(r['box_AP_change_vs_onnx_fp32'])} / "
                f"{_points(r.get('mask_AP_change_vs_onnx_fp32'))})"
                if r.get("box_AP_change_vs_onnx_fp32") is not None
                else ""
            )
        )
    return lines


# the speed row that each accuracy precision is (fp32 eager: what Predictor runs, BatchNorm folded)
SPEED_ROW = {
    "eager fp32": "ours, folded BN",
    "eager bf16": "ours, bf16",
    "onnxruntime fp32": "ours, onnxruntime",
    "onnxruntime int8": "ours, onnxruntime int8",
}


def _summary_lines(inference: list[dict], accuracy: list[dict]) -> list[str]:
    """One table: speed at batch 1 (fp32 pass) vs torchvision, and each model's AP per precision."""
    speed = {r["variant"]: r for r in inference if r["batch"] == 1 and r["dtype"] == "fp32"}
    tv = speed.get("torchvision")
    if tv is None or not ({"ours, bf16", "ours, onnxruntime int8", "detectron2"} & set(speed) or accuracy):
        return []
    models = list(dict.fromkeys(r["model"] for r in accuracy))
    ap = {(r["model"], r["precision"]): r for r in accuracy}
    header = f"{'row':<24} {'median ms':>10} {'vs tv':>6} {'dets':>5}" + "".join(
        f" {m[:18] + ' box/mask AP':>30}" for m in models
    )
    lines = ["", "summary: batch 1 on the timed images; AP of the trained models (Δ in AP points)", header]
    shown = {"torchvision": "torchvision eager fp32", "detectron2": "detectron2 eager fp32"}
    shown.update({row: f"ours {precision}" for precision, row in SPEED_ROW.items()})
    for name in ["torchvision", "detectron2", *SPEED_ROW.values()]:
        r = speed.get(name)
        precision = next((k for k, v in SPEED_ROW.items() if v == name), None)
        cells = ""
        for m in models:
            a = ap.get((m, precision)) if precision else None
            text = "-" if a is None else f"{_ap(a['box_AP'])}/{_ap(a['mask_AP'])}"
            if a is not None and a.get("box_AP_change") is not None and precision != "eager fp32":
                text += f" ({_points(a['box_AP_change'])}/{_points(a.get('mask_AP_change'))})"
            cells += f" {text:>30}"
        if r is None:
            lines.append(f"{shown[name]:<24} {'-':>10} {'-':>6} {'-':>5}{cells}")
        else:
            lines.append(
                f"{shown[name]:<24} {r['median_ms']:>10.1f} {tv['median_ms'] / r['median_ms']:>5.2f}x "
                f"{sum(r['detections']):>5}{cells}"
            )
    return lines
