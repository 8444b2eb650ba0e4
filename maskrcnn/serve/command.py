"""The `maskrcnn serve` command: its options, and loading the model and listening.

    maskrcnn serve --weights model_final.pt [--host 127.0.0.1] [--port 8000] [--device cpu]
                   [--max-batch-size 8] [--max-batch-wait-ms 10] [--max-upload-mb 20] [--max-pixels N]
                   [--precision fp32|bf16] [--request-timeout 30] [--max-buffered-mb 256]
                   [--api-key KEY | MASKRCNN_API_KEY=KEY] [--drain-timeout 30]

`--port 0` takes a free port; the line "serving ... on http://HOST:PORT" on stdout tells which.
SIGTERM or SIGINT drains: uvicorn stops accepting, answers every request it accepted for up to
`--drain-timeout` seconds (its `timeout_graceful_shutdown`), then the command exits 0.
FastAPI and uvicorn (the `serve` extra) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import sys

from ..errors import UserError

__all__ = ["add_serve_arguments", "cmd_serve"]

DEFAULT_MAX_PIXELS = 40_000_000


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="checkpoint path or URL, a weights name or a model.onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--device", default="cpu", help="device of the model (default cpu)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: the trunk and RPN head in bfloat16 where the device has native bf16 "
        "(AVX-512 BF16 / AMX CPU, GPU), else fp32 with a note (default fp32)",
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="most requests run together (default 8)")
    p.add_argument(
        "--max-batch-wait-ms",
        type=float,
        default=10.0,
        help="how long a request waits for others to batch with (default 10 ms)",
    )
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20 MB)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"largest image, width x height, checked before decoding (default {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="seconds a request body may take to arrive, else 408 (default 30)",
    )
    p.add_argument(
        "--max-buffered-mb",
        type=float,
        default=256.0,
        help="most bytes the uploads in flight may hold together, else 503 with Retry-After (default 256)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("MASKRCNN_API_KEY") or None,
        help="bearer token every route but /v1/health wants (default: $MASKRCNN_API_KEY; none: open). "
        "Prefer the variable: a command line is visible to every user of the machine",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM/SIGINT, seconds to finish the requests already accepted (default 30)",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _check(args: argparse.Namespace) -> None:
    """Option values, each error naming its option."""
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if args.max_batch_size < 1:
        raise UserError(f"--max-batch-size must be at least 1, got {args.max_batch_size}")
    if args.max_batch_wait_ms < 0:
        raise UserError(f"--max-batch-wait-ms must be >= 0, got {args.max_batch_wait_ms:g}")
    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb must be > 0, got {args.max_upload_mb:g}")
    if args.max_pixels < 1:
        raise UserError(f"--max-pixels must be at least 1, got {args.max_pixels}")
    if not args.request_timeout > 0:
        raise UserError(f"--request-timeout must be > 0 seconds, got {args.request_timeout:g}")
    if not args.max_buffered_mb >= args.max_upload_mb:
        raise UserError(
            f"--max-buffered-mb ({args.max_buffered_mb:g}) must be at least --max-upload-mb "
            f"({args.max_upload_mb:g}), or no upload of the largest size could ever be received"
        )
    if not args.drain_timeout >= 0:
        raise UserError(f"--drain-timeout must be >= 0 seconds, got {args.drain_timeout:g}")
    if args.api_key is not None and not args.api_key.strip():
        raise UserError("--api-key must not be empty")
    missing = [name for name in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"maskrcnn serve needs the serve extra (missing: {', '.join(missing)}): "
            "pip install 'maskrcnn[serve]'"
        )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        raise UserError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror or e})") from None


@contextlib.contextmanager
def _drain_is_success():
    """uvicorn re-raises the SIGTERM/SIGINT it drained on after it is done (so that a default
    handler ends the process by that signal): here the signal is answered by the drain and the
    command exits 0, so the re-raised one is ignored."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _return_big_frees_to_the_os() -> None:
    """glibc serves a buffer of 128 KiB or more by mmap and gives it back when freed, but raises
    that threshold after each such free (up to 32 MiB): later image-sized buffers (upload bytes,
    decoded pixels, tensors) then come from its arenas, which keep them, and the server's RSS
    grows with each burst of concurrent requests and stays (+260 MB after 3 bursts of 32 requests
    with the tiny model, still growing; +80..110 MB, not growing, with the threshold fixed).
    Fixing it at its initial 128 KiB (mallopt M_MMAP_THRESHOLD, as MALLOC_MMAP_THRESHOLD_=131072
    would) keeps that memory returning. Nothing happens where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(ctypes.c_int(-3), ctypes.c_int(128 * 1024))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def cmd_serve(args: argparse.Namespace) -> int:
    _check(args)
    import uvicorn
    from PIL import Image

    from .. import load
    from .app import backend_of, create_app
    from .guards import is_loopback

    with _listen(args.host, args.port) as sock:  # before the model loads: a taken port fails at once
        if not args.api_key and not is_loopback(sock.getsockname()[0]):
            print(
                f"warning: listening on {args.host}, beyond this machine, without an API key: anyone "
                "who reaches the port can use the model (--api-key or MASKRCNN_API_KEY)",
                file=sys.stderr,
                flush=True,
            )
        predictor = load(args.weights, device=args.device)
        note = predictor.set_precision(args.precision)  # a UserError for an ONNX model in bf16
        if note:
            print(f"note: {note}", file=sys.stderr, flush=True)
        app = create_app(
            predictor,
            max_batch_size=args.max_batch_size,
            max_batch_wait_ms=args.max_batch_wait_ms,
            max_upload_mb=args.max_upload_mb,
            max_pixels=args.max_pixels,
            request_timeout_s=args.request_timeout,
            max_buffered_mb=args.max_buffered_mb,
            api_key=args.api_key,
        )
        # uploads are checked against --max-pixels before decoding; Pillow's own guard follows it
        Image.MAX_IMAGE_PIXELS = args.max_pixels
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        backend = f"{backend_of(predictor)}, {predictor.device}, {predictor.precision}"
        print(f"serving {args.weights} ({backend}) on http://{shown}:{port}", flush=True)
        config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=args.drain_timeout)
        _return_big_frees_to_the_os()
        with _drain_is_success():
            uvicorn.Server(config).run(sockets=[sock])
    return 0
