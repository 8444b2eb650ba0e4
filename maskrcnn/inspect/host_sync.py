"""Host-sync count: the operations of one inference call that would make a CUDA device wait for the
host, found on the CPU, attributed to the model's stages.

A GPU runs ahead of Python as long as Python only queues work. It stops (the host waits until
every queued kernel has finished, and the GPU then idles until the host queues more) whenever the
host needs a value or a size that only the device knows, or copies pageable host memory to it:

    kind      what                                                    seen as
    scalar    .item(), int(t), float(t), bool(t), `if t:`, range(t)  aten._local_scalar_dense
    nonzero   torch.where(mask), nonzero(), argwhere()               aten.nonzero
    bool-idx  x[mask], x[mask] = v, masked_select                    aten.index / index_put with a
                                                                      bool index, aten.masked_select
    shape     ops whose output size depends on values: unique, unique_consecutive,
              repeat_interleave(tensor repeats) without output_size, bincount, torchvision::nms
              (its CUDA kernel copies the suppression mask to the host), torch.equal
    download  .cpu(), .numpy(), .tolist(), .to("cpu")                  (torch functions)
    upload    torch.tensor / as_tensor / asarray of host data with a device (torch functions)

Not counted: `len(t)` and `t.shape` (known on the host); factories without host data (zeros,
arange, full); sort/topk/gather/index with integer indices (fixed sizes); `.to(device)` with a
device object (on a CPU run a move to the model's device and a download look the same; write
downloads as `.cpu()`). Calls made inside a torch Python function (F.interpolate's body) are seen
only at the aten level, so a `.tolist()` in there would be missed.

The count is what runs: a branch that runs only on the CPU is counted as it runs. Two such
branches exist: torchvision's `batched_nms` runs NMS once per group (unique + where + nms each)
for more than 1000 boxes on the CPU (5000 on a GPU), and the pooler's `auto` RoIAlign takes the
sparse product on the CPU only. The report lists them in `cpu_only` so that a test can keep to
the paths a GPU takes (`roi_align_impl=torchvision`, NMS inputs under 1000 boxes).

Stage: from the Python stack at the moment of the operation, the innermost frame that runs a
method of one of the model's stage modules (preprocessor, backbone, rpn, the box/mask/keypoint
branches) or of the model itself (`MaskRCNN.preprocess`). A frame of a function whose name holds
"paste", or a branch's `to_original` of masks, is the stage "pasting". Each event also keeps the
innermost maskrcnn frame (file:line function), which the report prints.

    report = count_host_syncs(model.predict, images)
    print(report.table())
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

STAGES = ("preprocess", "backbone", "rpn", "box", "mask", "keypoint", "pasting", "other")

_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
_THIS_FILE = str(Path(__file__).resolve())
# frames in these libraries are never an event's "where", not even as the fallback
_LIBRARY_DIRS = tuple(str(Path(m.__file__).resolve().parent) for m in (torch, torchvision))
_CPU_ONLY = {  # (module, function) of the branches that run only on the CPU; see the docstring
    ("torchvision.ops.boxes", "_batched_nms_vanilla"): "torchvision batched_nms per group (CPU, >1000 boxes)",
    ("maskrcnn.ops.sparse_roi_align", "multilevel_roi_align"): "sparse RoIAlign (auto picks it on CPU)",
}
_SHAPE_OPS = {
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
    "aten::bincount",
    "aten::equal",
    "torchvision::nms",
}
_DOWNLOADS = {"cpu", "numpy", "tolist"}
_UPLOADS = {"tensor", "as_tensor", "asarray"}


@dataclass(frozen=True)
class SyncEvent:
    """One operation that waits for the device: its kind, the op, the stage and the source line."""

    kind: str  # scalar | nonzero | bool-idx | shape | download | upload
    op: str  # e.g. "aten::nonzero", "aten::_local_scalar_dense (item)", "Tensor.tolist"
    stage: str  # one of STAGES
    where: str  # innermost maskrcnn frame: "model/rpn.py:187 candidates" (or the innermost frame)
    cpu_only: str | None = None  # the CPU-only branch it ran in, if any


@dataclass
class SyncReport:
    """The events of one call, in order, with counts per stage, per op and per source line."""

    events: list[SyncEvent] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.events)

    def by_stage(self) -> dict[str, int]:
        """Stage -> count, every stage of STAGES listed (zeros included), in pipeline order."""
        counts = Counter(e.stage for e in self.events)
        return {s: counts.get(s, 0) for s in STAGES}

    def by_op(self) -> dict[str, int]:
        return dict(Counter(e.op for e in self.events).most_common())

    def by_line(self) -> dict[tuple[str, str, str], int]:
        """(stage, source line, op) -> count, in the order first seen."""
        return dict(Counter((e.stage, e.where, e.op) for e in self.events))

    @property
    def cpu_only(self) -> list[str]:
        """The CPU-only branches that ran (each named once): their events are not what a GPU does."""
        return sorted({e.cpu_only for e in self.events if e.cpu_only})

    def table(self) -> str:
        """A plain-text table: per stage and source line, the op and its count; then the totals."""
        rows = [("stage", "count", "op", "where")]
        for (stage, where, op), n in sorted(self.by_line().items(), key=lambda kv: STAGES.index(kv[0][0])):
            rows.append((stage, str(n), op, where))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
        per_stage = ", ".join(f"{s} {n}" for s, n in self.by_stage().items() if n)
        lines.append(f"total {self.total} host syncs ({per_stage or 'none'})")
        if self.cpu_only:
            lines.append("CPU-only branches ran: " + "; ".join(self.cpu_only))
        return "\n".join(lines)


def model_stages(model: nn.Module | None) -> dict[int, str]:
    """id(module) -> stage for a MaskRCNN's stage modules (empty for anything else)."""
    if model is None:
        return {}
    stages = {}
    for attr, stage in (("preprocessor", "preprocess"), ("backbone", "backbone"), ("rpn", "rpn")):
        if isinstance(getattr(model, attr, None), nn.Module):
            stages[id(getattr(model, attr))] = stage
    heads = getattr(model, "roi_heads", None)
    if isinstance(heads, nn.Module):
        stages[id(heads)] = "box"  # RoIHeads' own code: the box branch's detections
        for name, stage in (("box", "box"), ("mask", "mask"), ("keypoint", "keypoint")):
            if isinstance(getattr(heads, name, None), nn.Module):
                stages[id(getattr(heads, name))] = stage
    return stages


class _Recorder:
    """The state the two modes share: the stage map, the events, the method being run."""

    def __init__(self, model: nn.Module | None):
        self.model = model
        self.stages = model_stages(model)
        self.events: list[SyncEvent] = []
        self.methods: list[str] = []  # torch-function names being run (innermost last)

    def record(self, kind: str, op: str) -> None:
        stage, where, cpu_only = self._locate(sys._getframe(1))
        self.events.append(SyncEvent(kind=kind, op=op, stage=stage, where=where, cpu_only=cpu_only))

    def _locate(self, frame) -> tuple[str, str, str | None]:
        """(stage, where, cpu_only) of the op run from `frame`. where: the innermost maskrcnn line;
        when that is in ops/, also the first caller outside ops/ ("ops/nms.py:17 batched_nms <
        model/rpn.py:201 suppress"); without a maskrcnn frame, the innermost frame outside torch."""
        stage = cpu_only = first = None
        lines: list[str] = []
        while frame is not None:
            code = frame.f_code
            module = frame.f_globals.get("__name__", "")
            cpu_only = cpu_only or _CPU_ONLY.get((module, code.co_name))
            filename = code.co_filename
            if filename != _THIS_FILE and not filename.startswith(("<", *_LIBRARY_DIRS)):
                first = first or f"{Path(filename).name}:{frame.f_lineno} {code.co_name}"
                if filename.startswith(_PACKAGE_DIR) and (not lines or lines[-1].startswith("ops/")):
                    rel = Path(filename).relative_to(_PACKAGE_DIR).as_posix()
                    if not lines or not rel.startswith("ops/"):
                        lines.append(f"{rel}:{frame.f_lineno} {code.co_name}")
            stage = stage or self._stage_of(frame, module)
            if stage is not None and lines and not lines[-1].startswith("ops/"):
                break
            frame = frame.f_back
        return stage or "other", " < ".join(lines) or first or "?", cpu_only

    def _stage_of(self, frame, module: str) -> str | None:
        name = frame.f_code.co_name
        if module.startswith("maskrcnn.") and "paste" in name:
            return "pasting"
        owner = frame.f_locals.get("self")
        if owner is None:
            return None
        if owner is self.model:
            return "preprocess" if name == "preprocess" else None
        stage = self.stages.get(id(owner))
        if stage == "mask" and name == "to_original":
            return "pasting"
        return stage


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, recorder: _Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        kind = None
        if name == "aten::_local_scalar_dense":
            how = self.recorder.methods[-1] if self.recorder.methods else "?"
            name, kind = f"{name} ({how})", "scalar"
        elif name in ("aten::nonzero", "aten::argwhere"):
            kind = "nonzero"
        elif name == "aten::masked_select" or (
            name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_")
            and _has_bool_index(args[1] if len(args) > 1 else kwargs.get("indices"))
        ):
            kind = "bool-idx"
        elif name in _SHAPE_OPS or (
            name == "aten::repeat_interleave"
            and func._overloadname in ("Tensor", "self_Tensor")  # the repeats are a tensor
            and kwargs.get("output_size") is None
        ):
            kind = "shape"
        if kind is not None:
            self.recorder.record(kind, name)
        return func(*args, **kwargs)


def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class _FunctionCounter(TorchFunctionMode):
    def __init__(self, recorder: _Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _DOWNLOADS or (name == "to" and _to_cpu_literal(args[1:], kwargs)):
            self.recorder.record("download", f"Tensor.{name}" + ('("cpu")' if name == "to" else "()"))
        elif name in _UPLOADS and _is_upload(args, kwargs):
            self.recorder.record("upload", f"torch.{name}(host data, device=)")
        self.recorder.methods.append(name)
        try:
            return func(*args, **kwargs)
        finally:
            self.recorder.methods.pop()


def _to_cpu_literal(args, kwargs) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, str) and target.split(":")[0] == "cpu"


def _is_upload(args, kwargs) -> bool:
    device = kwargs.get("device")
    data = args[0] if args else kwargs.get("data")
    if device is None or isinstance(data, torch.Tensor):
        return False
    return not (isinstance(device, str) and device.split(":")[0] == "cpu")


def count_host_syncs(fn: Callable[..., Any], *args, model: nn.Module | None = None, **kwargs) -> SyncReport:
    """Run fn(*args, **kwargs) once and return the host syncs it made. `model`: whose stage
    modules name the stages (default: fn's `__self__`, as for `count_host_syncs(model.predict, x)`)."""
    report, _ = run_counted(fn, *args, model=model, **kwargs)
    return report


def run_counted(
    fn: Callable[..., Any], *args, model: nn.Module | None = None, **kwargs
) -> tuple[SyncReport, Any]:
    """count_host_syncs that also returns fn's result."""
    owner = model if model is not None else getattr(fn, "__self__", None)
    recorder = _Recorder(owner if isinstance(owner, nn.Module) else None)
    with _FunctionCounter(recorder), _DispatchCounter(recorder):
        result = fn(*args, **kwargs)
    return SyncReport(events=list(recorder.events)), result
