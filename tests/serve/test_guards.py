"""The defences of `maskrcnn serve`, against real uvicorn processes: the API key (401 / 200, /v1/health
open, the page asks once), stalled uploads (408 within --request-timeout, the server's memory
returns), the buffered-bytes bound (503 with Retry-After), client disconnects (one log line, no
traceback), draining on SIGINT/SIGTERM (every accepted request answered 200, exit 0) and the
warning for a non-loopback address without a key."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from maskrcnn import cli

from .conftest import running_server
from .test_page import browser  # noqa: F401  (the module's Chromium, for the page test)

KEY = "s3cret-key-for-tests"
REQUEST_TIMEOUT_S = 3.0
STALLED = 4  # stalled uploads of STALLED_MB each fill --max-buffered-mb exactly
STALLED_MB = 19
MIB = 1 << 20
PHOTO = "coco-mini/val2017/000000000139.jpg"
OTHER_PHOTO = "coco-mini/val2017/000000022192.jpg"
TIMEOUT = httpx.Timeout(60.0)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def guarded(weights, tmp_path_factory):
    """A server with an API key (from MASKRCNN_API_KEY), a 3 s request timeout and 76 MB of bodies."""
    options = ["--request-timeout", str(REQUEST_TIMEOUT_S), "--max-buffered-mb", str(STALLED * STALLED_MB)]
    folder = tmp_path_factory.mktemp("guarded")
    with running_server(weights, folder, *options, env={"MASKRCNN_API_KEY": KEY}) as server:
        yield server


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=60)


def _send_upload(url: str, *, declared: int, body: bytes, key: str | None = KEY) -> socket.socket:
    """A POST /v1/predict on a raw socket declaring `declared` body bytes and sending `body`."""
    sock = _connect(url)
    head = f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\nConnection: close\r\n"
    head += f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(head.encode() + b"\r\n" + body)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """-> (status, headers, JSON body) of the response on `sock`, read until the server closes."""
    data = b""
    with sock:
        while chunk := sock.recv(1 << 16):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _in_flight(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/v1/health", timeout=TIMEOUT).json()["in_flight"]


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.05)


def test_api_key_is_wanted_on_every_route_but_health(guarded, shared_data):
    photo = (shared_data / PHOTO).read_bytes()
    url = guarded.url
    assert httpx.get(f"{url}/v1/health", timeout=TIMEOUT).status_code == 200
    for key in (None, "wrong-key", KEY[:-1]):
        headers = _auth(key) if key else {}
        refused = [
            httpx.post(f"{url}/v1/predict", content=photo, headers=headers, timeout=TIMEOUT),
            httpx.get(f"{url}/v1/model", headers=headers, timeout=TIMEOUT),
            httpx.get(f"{url}/openapi.json", headers=headers, timeout=TIMEOUT),
        ]
        for response in refused:
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in response.json()["detail"]
    big = photo * 12  # ~2 MB, answered 401 before it is read: the server drops the rest, no reset
    statuses = [httpx.post(f"{url}/v1/predict", content=big, timeout=TIMEOUT).status_code for _ in range(10)]
    assert statuses == [401] * 10
    answer = httpx.post(f"{url}/v1/predict", content=photo, headers=_auth(), timeout=TIMEOUT)
    assert answer.status_code == 200 and len(answer.json()["detections"]) == 5
    limits = httpx.get(f"{url}/v1/model", headers=_auth(), timeout=TIMEOUT).json()["limits"]
    assert (limits["request_timeout_s"], limits["max_buffered_mb"]) == (
        REQUEST_TIMEOUT_S,
        STALLED * STALLED_MB,
    )
    assert "/v1/predict" in httpx.get(f"{url}/openapi.json", headers=_auth(), timeout=TIMEOUT).json()["paths"]
    assert httpx.get(f"{url}/", timeout=TIMEOUT).status_code == 200  # the page, which asks for the key


def test_stalled_uploads_get_408_and_a_full_server_503(guarded, shared_data):
    url, pid = guarded.url, guarded.process.pid
    photo = (shared_data / PHOTO).read_bytes()
    before = _rss_mb(pid)
    declared = STALLED_MB * MIB
    started = time.monotonic()
    stalled = [_send_upload(url, declared=declared, body=b"\1" * (declared - 1024)) for _ in range(STALLED)]
    _wait_for(lambda: _in_flight(url)["requests"] == STALLED, 5, "the stalled uploads in flight")
    assert _in_flight(url)["buffered_bytes"] == STALLED * declared
    _wait_for(lambda: _rss_mb(pid) > before + 0.8 * STALLED * STALLED_MB, 5, "the server holding the bodies")
    held = _rss_mb(pid)

    # full: any further upload is refused at once, with Retry-After (its body read and dropped)
    busy = _read_response(_send_upload(url, declared=len(photo), body=photo))
    assert busy[0] == 503 and int(busy[1]["retry-after"]) >= 1
    assert "--max-buffered-mb" in busy[2]["detail"]

    for sock in stalled:
        status, headers, body = _read_response(sock)
        assert (status, headers["connection"]) == (408, "close")
        assert "--request-timeout" in body["detail"] and f"{declared - 1024} bytes" in body["detail"]
    waited = time.monotonic() - started
    assert REQUEST_TIMEOUT_S <= waited < REQUEST_TIMEOUT_S + 3

    assert _in_flight(url) == {"requests": 0, "buffered_bytes": 0}
    _wait_for(lambda: _rss_mb(pid) < before + 0.25 * (held - before), 5, f"RSS back near {before:.0f} MB")
    answer = httpx.post(f"{url}/v1/predict", content=photo, headers=_auth(), timeout=TIMEOUT)
    assert answer.status_code == 200 and len(answer.json()["detections"]) == 5


def test_a_client_that_goes_away_is_one_log_line(guarded, shared_data):
    photo = (shared_data / PHOTO).read_bytes()
    sock = _send_upload(guarded.url, declared=len(photo), body=photo[: len(photo) // 2])
    port = sock.getsockname()[1]
    _wait_for(lambda: _in_flight(guarded.url)["requests"] == 1, 5, "the upload in flight")
    sock.close()
    line = f"127.0.0.1:{port} went away during POST /v1/predict after {len(photo) // 2} bytes"
    _wait_for(lambda: line in guarded.log_text(), 5, f"the log line {line!r}")
    # one that leaves while its image is predicted: nothing to log, nothing to answer
    _send_upload(guarded.url, declared=len(photo), body=photo).close()
    answer = httpx.post(f"{guarded.url}/v1/predict", content=photo, headers=_auth(), timeout=TIMEOUT)
    assert answer.status_code == 200
    log = guarded.log_text()
    assert (
        log.count(" went away during ") == 1 and "Traceback" not in log and "Exception in ASGI" not in log
    ), log


def test_the_page_asks_for_the_key_once(guarded, browser, shared_data):  # noqa: F811
    page = browser.new_page()
    page.set_default_timeout(60_000)
    asked = []

    def answer(dialog) -> None:
        asked.append(dialog.message)
        dialog.accept(KEY)

    page.on("dialog", answer)
    page.goto(f"{guarded.url}/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('classes')")
    for name in (PHOTO, OTHER_PHOTO):
        with page.expect_response("**/v1/predict") as response:
            page.set_input_files("#file", str(shared_data / name))
        assert response.value.status == 200
        done = f"document.getElementById('status').textContent.startsWith('{name.split('/')[-1]}: ')"
        page.wait_for_function(done)
        assert "5 detections" in page.text_content("#status")
    assert asked == ["This server needs its API key:"]
    page.close()


def test_sigterm_during_a_burst_answers_all_20_and_exits_0(guarded, shared_data):
    """Last of the module's server tests: it ends that server. 20 uploads are accepted (all but
    the last byte of each sent), then SIGTERM: no new connection is accepted, the 20 finish and
    are answered 200, and the command exits 0. (Each teardown of `running_server` stops its server
    with SIGINT and wants exit 0 too.)"""
    photo = (shared_data / PHOTO).read_bytes()
    socks = [_send_upload(guarded.url, declared=len(photo), body=photo[:-1]) for _ in range(20)]
    _wait_for(lambda: _in_flight(guarded.url)["requests"] == 20, 5, "20 requests in flight")
    guarded.process.send_signal(signal.SIGTERM)
    parts = urlsplit(guarded.url)
    _wait_for(lambda: _refused(parts.hostname, parts.port), 1.5, "new connections refused")
    for sock in socks:
        sock.sendall(photo[-1:])
    answers = [_read_response(sock) for sock in socks]
    assert [status for status, _, _ in answers] == [200] * 20
    assert all(len(body["detections"]) == 5 for _, _, body in answers)
    assert guarded.process.wait(timeout=60) == 0
    assert "Traceback" not in guarded.log_text()


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return True
    return False


def test_warning_without_a_key_beyond_loopback_and_option_errors(tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "nothing.pt")
    monkeypatch.delenv("MASKRCNN_API_KEY", raising=False)
    assert cli.main(["serve", "--weights", missing, "--host", "0.0.0.0", "--port", "0"]) == 1
    warning, error = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: listening on 0.0.0.0, beyond this machine, without an API key")
    assert error.startswith("error: ") and "nothing.pt" in error
    for host in ("127.0.0.1", "::1"):
        assert cli.main(["serve", "--weights", missing, "--host", host, "--port", "0"]) == 1
        assert capsys.readouterr().err.startswith("error: ")
    monkeypatch.setenv("MASKRCNN_API_KEY", KEY)
    assert cli.main(["serve", "--weights", missing, "--host", "0.0.0.0", "--port", "0"]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    for options, message in [
        (["--request-timeout", "0"], "--request-timeout must be > 0 seconds, got 0"),
        (["--max-buffered-mb", "10"], "--max-buffered-mb (10) must be at least --max-upload-mb (20)"),
        (["--drain-timeout", "-1"], "--drain-timeout must be >= 0 seconds, got -1"),
        (["--api-key", " "], "--api-key must not be empty"),
    ]:
        assert cli.main(["serve", "--weights", missing, *options]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert os.environ["MASKRCNN_API_KEY"] == KEY
