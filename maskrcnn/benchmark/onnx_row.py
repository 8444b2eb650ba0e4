"""The ONNX Runtime row of `maskrcnn benchmark`: our model exported to ONNX (`maskrcnn.export`, as
`maskrcnn export` writes it) and run by onnxruntime on the CPU with as many threads as torch uses,
one image per run (the graph takes one image), masks pasted outside the graph as `predict` does.

    row = OnnxRow(model, threads=2)
    predict = row.predictor()          # None when onnxruntime is missing: row.skipped says why
    predict([image])                   # [(boxes (D, 4), labels (D,), scores (D,))]
    row.close()                        # removes the exported file
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
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


class OnnxRow:
    """Exports `model` once, on the first `predictor()` call, into a temporary folder."""

    def __init__(self, model: nn.Module, *, threads: int):
        self.model = model
        self.threads = threads
        self.skipped: Optional[str] = None
        self.export_s: Optional[float] = None
        self._folder: Optional[Path] = None
        self._predict: Optional[Predict] = None

    def predictor(self) -> Optional[Predict]:
        if self._predict is not None or self.skipped is not None:
            return self._predict
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            self.skipped = f"{' and '.join(missing)} not installed (pip install maskrcnn[onnx])"
            return None
        self._folder = Path(tempfile.mkdtemp(prefix="maskrcnn-bench-onnx-"))
        self._predict = _export_and_load(self.model, self._folder / "model.onnx", threads=self.threads)
        return self._predict

    def close(self) -> None:
        self._predict = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _export_and_load(model: nn.Module, path: Path, *, threads: int) -> Predict:
    from ..export.onnx import export_onnx
    from ..export.runtime import OnnxModel

    export_onnx(model, path)
    runtime = OnnxModel(path, threads=threads)

    def predict(batch: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
        return [(d.boxes, d.labels, d.scores) for d in runtime.predict(batch)]

    return predict
