"""The training log: RUN/metrics.jsonl (one JSON object per logged iteration or evaluation) and, when
the tensorboard extra is installed, the same scalars as TensorBoard events in RUN/tensorboard/.

Only the main process writes. A resumed run first drops what was logged after its checkpoint
(`keep_until`), since those iterations run again: the JSON lines up to the checkpoint stay as they
were, a line cut short by a kill is dropped, and TensorBoard hides the events after the checkpoint
(`purge_step`), so every iteration appears once in both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files import WriteError, atomic_write_text


def _tensorboard_writer(log_dir: Path, *, purge_step: int | None = None):
    """(a SummaryWriter or None, the one line telling whether the run logs to TensorBoard)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra is not installed
        return None, (
            f"TensorBoard: off (to also log scalars to {log_dir}: pip install 'maskrcnn[tensorboard]')"
        )
    try:
        writer = SummaryWriter(str(log_dir), purge_step=purge_step)
    except Exception as e:  # e.g. an unwritable folder: the JSON log still works
        return None, f"TensorBoard: off (cannot write to {log_dir}: {e})"
    return writer, f"TensorBoard: logging scalars to {log_dir} (tensorboard --logdir {log_dir})"


def _iteration(line: str) -> int | None:
    """The iteration of one JSON line; None for a line that is not a whole JSON object (cut short)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("iteration", 0) if isinstance(record, dict) else None


class MetricsWriter:
    """JSON lines (always) and TensorBoard (when installed), on the main process only.
    `start_iteration`: the iteration the run starts at (its checkpoint's, 0 for a fresh run)."""

    def __init__(self, out_dir: Path, enabled: bool, *, start_iteration: int = 0):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb, self.tensorboard_note = None, ""
        if enabled:
            purge = start_iteration + 1 if (Path(out_dir) / "tensorboard").is_dir() else None
            self.tb, self.tensorboard_note = _tensorboard_writer(
                Path(out_dir) / "tensorboard", purge_step=purge
            )

    def keep_until(self, iteration: int) -> None:
        """Drop records logged after `iteration`: a fresh run (0) starts an empty log; a resumed run
        drops what was logged after its checkpoint, since those iterations run again. A last line
        cut short (the process was killed while writing it) is dropped too."""
        if not self.enabled or not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = []
        for line in lines:
            it = _iteration(line) if line.strip() else None
            if it is not None and it <= iteration:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._append(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "iteration":
                    self.tb.add_scalar(key, value, record.get("iteration", 0))

    def _append(self, line: str) -> None:
        """Append one line; a write the file system refuses (a full disk) cuts the file back to its
        complete lines and is a WriteError naming it."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        size = os.fstat(fd).st_size
        try:
            data = memoryview(line.encode())
            while data:
                data = data[os.write(fd, data) :]
        except OSError as e:
            os.ftruncate(fd, size)
            raise WriteError(
                f"could not write {self.path}: {e.strerror or e}; it keeps its complete lines"
            ) from e
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
