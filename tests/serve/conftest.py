"""The server of the serve tests: a real `python -m maskrcnn serve` process on a free port of
127.0.0.1, with the tiny random 2-class model (it detects ~5 things per image) and small limits, one
for the whole package, stopped at the end."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail_in_ci
from tests.helpers import REPO_ROOT

MAX_UPLOAD_MB = 1
MAX_PIXELS = 1_000_000  # coco-mini images are at most 640 x 640
START_TIMEOUT_S = 120


@dataclass
class Server:
    url: str
    log: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="package")
def weights(tiny_weights) -> Path:
    return tiny_weights


def _wait_for_url(process: subprocess.Popen, log: Path, deadline: float) -> str:
    """The address from the command's "serving ... on http://HOST:PORT" line."""
    while time.monotonic() < deadline:
        found = re.search(r" on (http://127\.0\.0\.1:\d+)$", log.read_text(errors="replace"), re.MULTILINE)
        if found:
            return found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError("the server did not start")


def _wait_for_health(httpx, url: str, process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/v1/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server never answered /v1/health")


@contextmanager
def running_server(weights: Path, folder: Path, *options: str, env: dict[str, str] | None = None):
    """A `maskrcnn serve` process of `weights` with `options` on a free port of 127.0.0.1, its output
    in folder/server.log, until the block ends; then, if still running, stopped with SIGINT, which
    must end it with exit status 0 (a failure of the teardown otherwise)."""
    for module in ("fastapi", "uvicorn", "multipart", "httpx"):
        if importlib.util.find_spec(module) is None:
            skip_or_fail_in_ci(f"{module} is not installed (pip install -e '.[dev,serve]')")
    import httpx

    log = folder / "server.log"
    command = [sys.executable, "-m", "maskrcnn", "serve", "--weights", str(weights), "--port", "0", *options]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            url = _wait_for_url(process, log, deadline)
            _wait_for_health(httpx, url, process, deadline)
        except RuntimeError as e:
            pytest.fail(f"{e}; its output:\n{log.read_text(errors='replace')}")
        yield Server(url, log, process)
    except BaseException:
        process.kill()
        process.wait(timeout=10)
        raise
    # stopped as Ctrl-C stops it: it drains (nothing is in flight) and must exit 0
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            code = "none within 20 s"
        if code != 0:
            pytest.fail(
                f"the server's exit status on SIGINT: {code}; its output:\n{log.read_text(errors='replace')}"
            )


@pytest.fixture(scope="package")
def server(weights, tmp_path_factory):
    limits = ["--max-upload-mb", str(MAX_UPLOAD_MB), "--max-pixels", str(MAX_PIXELS)]
    with running_server(weights, tmp_path_factory.mktemp("serve-log"), *limits) as server:
        yield server
