"""Video files with PyAV (FFmpeg's libraries): decode frames to RGB arrays, encode RGB frames to MP4.

Frames come out the way players show them: a display-matrix rotation (phone videos) is applied.
Output is H.264 (libx264) in yuv420p when the FFmpeg build has it, else MPEG-4 part 2; yuv420p
needs even sizes, so an odd width or height is padded by one replicated column or row.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from fractions import Fraction

import numpy as np

from .errors import UserError

__all__ = ["VideoReader", "VideoWriter"]

_DEFAULT_FPS = Fraction(25)


class VideoReader:
    """Iterate over a video's frames as (index, time in seconds, (H, W, 3) uint8 RGB)."""

    def __init__(self, path: str | os.PathLike):
        import av

        self.path = path
        try:
            self._container = av.open(str(path))
        except (av.FFmpegError, OSError) as e:
            raise UserError(f"{path}: cannot open as a video ({e})") from None
        if not self._container.streams.video:
            self._container.close()
            raise UserError(f"{path}: has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
        self.fps: Fraction = Fraction(rate) if rate else _DEFAULT_FPS
        self.frame_count: int = int(self._stream.frames or 0)  # 0 when the container does not say

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        import av

        index = 0
        try:
            for frame in self._container.decode(self._stream):
                rgb = frame.to_ndarray(format="rgb24")
                turns = int(round(getattr(frame, "rotation", 0) / 90.0)) % 4
                if turns:  # rotation: degrees counter-clockwise that the display applies
                    rgb = np.ascontiguousarray(np.rot90(rgb, k=turns))
                time = float(frame.time) if frame.time is not None else index / float(self.fps)
                yield index, time, rgb
                index += 1
        except av.FFmpegError as e:
            raise UserError(f"{self.path}: decoding failed after {index} frames ({e})") from None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _codec() -> str:
    import av

    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except (av.FFmpegError, ValueError):
        return "mpeg4"


class VideoWriter:
    """Write (H, W, 3) uint8 RGB frames of one size to an MP4 file at a constant frame rate. The
    file is created at the first frame: a writer that gets no frame leaves no file. It is written
    as a hidden temporary file beside `path` (`.NAME.RANDOM.tmp.mp4`) renamed to `path` by a
    `close` that succeeds; a failure (a full disk: a `WriteError` naming `path`) or an exception
    in the `with` block removes it, so `path` is never a cut-short video."""

    def __init__(self, path: str | os.PathLike, *, fps: Fraction | float):
        self.path = path
        self.fps = Fraction(fps).limit_denominator(1001)
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._tmp: str | None = None
        self.frames_written = 0

    def _open(self, h: int, w: int) -> None:
        import tempfile

        import av

        folder, name = os.path.split(os.fspath(self.path))
        suffix = f".tmp{os.path.splitext(name)[1]}"  # the real suffix last: it chooses the format
        fd, self._tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder or ".")
        os.close(fd)
        self._container = av.open(self._tmp, mode="w")
        self._stream = self._container.add_stream(_codec(), rate=self.fps)
        self._stream.pix_fmt = "yuv420p"
        self._stream.height, self._stream.width = h + h % 2, w + w % 2
        self._size = (h, w)

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        if self._container is None:
            self._open(h, w)
        elif self._size != (h, w):
            raise UserError(
                f"{self.path}: frame {self.frames_written} is {w}x{h}, "
                f"the video is {self._size[1]}x{self._size[0]}"
            )
        if h % 2 or w % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        with self._failing_write():
            self._container.mux(self._stream.encode(frame))
        self.frames_written += 1

    @contextmanager
    def _failing_write(self) -> Iterator[None]:
        """A write that raises discards the temporary file; the file system's refusal (an OSError)
        becomes a WriteError naming `path`."""
        from .files import write_error

        try:
            yield
        except BaseException as e:
            self._discard()
            error = write_error(self.path, e, existed=os.path.exists(self.path))
            if error is not None:
                raise error from e
            raise

    def _discard(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            with suppress(Exception):  # the file is thrown away; the first error is the one raised
                container.close()
        if self._tmp is not None and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._tmp = None

    def close(self) -> None:
        if self._container is not None:
            from .files import default_file_mode

            with self._failing_write():
                self._container.mux(self._stream.encode(None))  # flush the frames the encoder holds back
                self._container.close()
                self._container = None
                os.chmod(self._tmp, default_file_mode())
                os.replace(self._tmp, self.path)
                self._tmp = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:  # the block failed (or Ctrl-C): no half video under `path`
            self._discard()
        else:
            self.close()
