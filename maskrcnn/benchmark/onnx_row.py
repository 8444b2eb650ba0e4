"""The ONNX Runtime rows of `maskrcnn benchmark`: our model exported to ONNX (`maskrcnn.export`, as
`maskrcnn export` writes it) and run by onnxruntime on the CPU with as many threads as torch uses,
one image per run (the graph takes one image), masks pasted outside the graph as `predict` does;
in fp32, and statically quantised to int8 (`maskrcnn.export.quantize.quantize_onnx`, what
`maskrcnn export --int8` writes) calibrated on `count` images of a dataset spec (coco-mini train by
default: not the timed images). The int8 row is skipped with a note where `maskrcnn.export.quantize`
is missing (an older checkout) or onnxruntime.quantization is not installed.

    row = OnnxRow(model, threads=2, calibration="coco:ANN.json:DIR", count=16)
    predict = row.predictor("fp32")    # None when onnxruntime is missing: row.skipped["fp32"] says why
    predict([image])                   # [(boxes (D, 4), labels (D,), scores (D,))]
    row.predictor("int8")              # quantised once from the fp32 file (untimed)
    row.close()                        # removes the exported files
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from torch import Tensor, nn

Predict = Callable[[list[Tensor]], list[tuple[Tensor, Tensor, Tensor]]]


def onnxruntime_version() -> Optional[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    return onnxruntime.__version__


def int8_tools() -> tuple[Optional[tuple[Callable, Callable]], Optional[str]]:
    """(quantize_onnx, calibration_images_from) from maskrcnn.export, or (None, why not)."""
    try:
        quantize = importlib.import_module("maskrcnn.export.quantize")
    except ImportError as e:
        return None, f"maskrcnn.export.quantize is not available ({e})"
    calibration = getattr(quantize, "calibration_images_from", None)
    if calibration is None:
        try:
            calibration = importlib.import_module("maskrcnn.export.calibration").calibration_images_from
        except (ImportError, AttributeError) as e:
            return None, f"no calibration_images_from in maskrcnn.export ({e})"
    return (quantize.quantize_onnx, calibration), None


class OnnxRow:
    """Exports `model` once, on the first `predictor()` call, into a temporary folder."""

    def __init__(self, model: nn.Module, *, threads: int, calibration: str = "", count: int = 16):
        self.model = model
        self.threads = threads
        self.calibration = calibration
        self.count = count
        self.skipped: dict[str, str] = {}
        self.details: dict[str, dict] = {}  # per precision: export / quantisation seconds
        self._folder: Optional[Path] = None
        self._predict: dict[str, Predict] = {}

    def predictor(self, precision: str = "fp32") -> Optional[Predict]:
        if precision in self._predict or precision in self.skipped:
            return self._predict.get(precision)
        path = self.file(precision)
        if path is not None:
            self._predict[precision] = _load(path, threads=self.threads)
        return self._predict.get(precision)

    def file(self, precision: str = "fp32") -> Optional[Path]:
        """The exported (fp32) or quantised (int8) file, made on the first call; None when it cannot
        be made here (`skipped[precision]` says why)."""
        if precision in self.skipped:
            return None
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            self.skipped[precision] = f"{' and '.join(missing)} not installed (pip install maskrcnn[onnx])"
            return None
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="maskrcnn-bench-onnx-"))
        fp32 = self._folder / "model.onnx"
        if not fp32.exists():
            from ..export.onnx import export_onnx

            start = time.perf_counter()
            export_onnx(self.model, fp32)
            self.details["fp32"] = {"export_s": time.perf_counter() - start}
        if precision == "int8" and (self._folder / "model-int8.onnx").exists():
            return self._folder / "model-int8.onnx"
        path = fp32
        if precision == "int8":
            tools, why = int8_tools()
            if tools is None:
                self.skipped["int8"] = why
                return None
            if not self.calibration:
                self.skipped["int8"] = "no calibration images (--calibration SPEC)"
                return None
            quantize_onnx, calibration_images_from = tools
            start = time.perf_counter()
            images = calibration_images_from(self.calibration, count=self.count)
            path = quantize_onnx(
                fp32, self._folder / "model-int8.onnx", calibration_images=images, progress=False
            )
            self.details["int8"] = {
                "quantize_s": time.perf_counter() - start,
                "calibration": self.calibration,
                "calibration_images": len(images),
            }
        return Path(path)

    def close(self) -> None:
        self._predict = {}
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _load(path: Path, *, threads: int) -> Predict:
    from ..export.runtime import OnnxModel

    runtime = OnnxModel(path, threads=threads)

    def predict(batch: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
        return [(d.boxes, d.labels, d.scores) for d in runtime.predict(batch)]

    return predict
