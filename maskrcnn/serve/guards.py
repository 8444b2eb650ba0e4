"""What keeps slow, hostile or vanishing clients from hurting the server of `maskrcnn serve`.

- `RequestGuard` (ASGI middleware, inside `uploads.BodyLimit`, so an oversized body is a 413 first):
  - a request body must arrive whole within `request_timeout_s` of the request's start, else 408
    (`--request-timeout`); the connection is closed and what the body had buffered is dropped;
  - the bodies of the requests in flight may hold at most `max_buffered_bytes` together
    (`--max-buffered-mb`): a request is counted with its Content-Length from its start (a chunked
    one with the bytes received so far) until it is answered; one that does not fit gets 503 with
    `Retry-After`, its body read and dropped first (see `uploads._discard_body`);
  - a client that goes away mid-upload is logged as one line (no traceback) and nothing is answered;
  - a request still unanswered when a shutdown's drain time is over (uvicorn cancels it) gets 503;
- `InFlight`: the uploads (requests with a body) being received or answered and the bytes they
  hold, shown by /v1/health.
- `api_key_dependency(key)`: a FastAPI dependency that wants `Authorization: Bearer KEY`, compared
  in constant time (`hmac.compare_digest`); 401 with `WWW-Authenticate: Bearer` otherwise.
- `is_loopback(host)`: whether a listening address is reachable only from this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import math
from typing import Any, Callable

from fastapi import HTTPException, Request

from .uploads import Receive, Scope, Send, _discard_body, _send_json

__all__ = ["InFlight", "RequestGuard", "api_key_dependency", "is_loopback"]

log = logging.getLogger("uvicorn.error")  # uvicorn's own log: one format for every line


class _Refused(Exception):
    """Raised from inside `receive`; answered by `RequestGuard` itself (the app's handlers never see it)."""

    def __init__(self, status: int, reason: str, *, drain: bool):
        super().__init__(reason)
        self.status, self.reason, self.drain = status, reason, drain


def _what(scope: Scope) -> tuple[str, str]:
    return scope.get("method", ""), scope.get("path", "")


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "a client"


class InFlight:
    """The requests in flight and the body bytes they hold, against `max_buffered_bytes`; shared by
    `RequestGuard` and /v1/health (one event loop: no lock)."""

    def __init__(self, *, max_buffered_bytes: int, retry_after_s: float):
        self.max_buffered_bytes = max_buffered_bytes
        self.retry_after = str(max(1, math.ceil(retry_after_s)))
        self.requests = 0
        self.buffered = 0

    def snapshot(self) -> dict[str, int]:
        return {"requests": self.requests, "buffered_bytes": self.buffered}

    def reserve(self, n: int, held: int) -> int:
        """Take `n` more bytes for a request holding `held` -> its new holding; `_Refused` 503 if full."""
        if self.buffered + n > self.max_buffered_bytes:
            raise _Refused(
                503,
                f"server busy: the uploads in flight hold {self.buffered / (1 << 20):.3g} MB of the "
                f"{self.max_buffered_bytes / (1 << 20):.3g} MB they may hold (--max-buffered-mb); "
                f"retry in {self.retry_after} s",
                drain=True,
            )
        self.buffered += n
        return held + n


class RequestGuard:
    """ASGI middleware: body timeout (408), a bound on buffered bytes (503), quiet disconnects
    (see the module docstring)."""

    def __init__(self, app: Any, *, request_timeout_s: float, budget: InFlight):
        self.app = app
        self.request_timeout_s = request_timeout_s
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout_s
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        held = 0  # bytes of the budget this request holds
        received = 0
        body_done = scope.get("method") in ("GET", "HEAD", "OPTIONS") and not declared
        gone = False
        started = False

        async def guarded_receive() -> dict[str, Any]:
            nonlocal held, received, body_done, gone
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise _Refused(
                    408,
                    f"request body incomplete after {self.request_timeout_s:g} s "
                    f"({received} bytes received; --request-timeout)",
                    drain=False,
                ) from None
            if message["type"] == "http.disconnect":
                gone = True
                return message
            received += len(message.get("body", b""))
            body_done = not message.get("more_body", False)
            if received > held:  # a chunked body, or one longer than it said
                held = self.budget.reserve(received - held, held)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        counted = not body_done  # uploads only: a GET /v1/health does not count itself
        self.budget.requests += counted
        try:
            if declared.isdigit() and int(declared) > 0:
                held = self.budget.reserve(int(declared), held)
            await self.app(scope, guarded_receive, tracking_send)
            if not body_done and not gone:  # answered unread (a 401): drop the rest, or the close resets
                with contextlib.suppress(Exception):  # answered already: nothing left to tell
                    await _discard_body(receive)
        except _Refused as e:
            if started:
                raise
            log.info("%s %s %s: %d (%s)", _client(scope), scope["method"], scope["path"], e.status, e.reason)
            if e.drain and not body_done:
                await _discard_body(receive)
            headers = {"retry-after": self.budget.retry_after} if e.status == 503 else {}
            await _send_json(send, e.status, e.reason, headers=headers)
        except asyncio.CancelledError:
            if started:
                raise
            # uvicorn cancels what is unanswered when --drain-timeout ends: a 503, not its 500
            log.warning("%s %s %s: 503 (not answered within --drain-timeout)", _client(scope), *_what(scope))
            reason = "the server stopped before this request was answered (--drain-timeout)"
            await _send_json(send, 503, reason, headers={"retry-after": self.budget.retry_after})
        except Exception as e:
            if not gone:
                raise
            # starlette's ClientDisconnect, or whatever reading a vanished body raised: one line
            log.info(
                "%s went away during %s %s after %d bytes of its body (%s): not answered",
                _client(scope),
                scope["method"],
                scope["path"],
                received,
                type(e).__name__,
            )
        finally:
            self.budget.requests -= counted
            self.budget.buffered -= held


def api_key_dependency(key: str) -> Callable[..., None]:
    """A FastAPI dependency: 401 unless the request carries `Authorization: Bearer <key>`."""
    expected = key.encode()

    def require_api_key(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected):
            return
        reason = "wrong API key" if token else "this server needs an API key"
        raise HTTPException(
            401,
            f"{reason}: send the header 'Authorization: Bearer <key>' (the key given to --api-key "
            "or MASKRCNN_API_KEY)",
            headers={"WWW-Authenticate": "Bearer"},
        )

    return require_api_key


def is_loopback(host: str) -> bool:
    """Whether a bound address (an IP, as `socket.getsockname` gives it) is loopback only."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"
