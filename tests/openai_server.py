"""A small OpenAI-compatible streaming server for tests: stdlib only, real HTTP, real SSE.

`FakeOpenAIServer` listens on a free 127.0.0.1 port in a background thread (HTTP/1.1,
keep-alive). ``POST /v1/chat/completions`` with ``"stream": true`` answers ``200`` with a
chunked ``text/event-stream`` body, one SSE message per HTTP chunk, flushed as it goes::

    data: {"object": "chat.completion.chunk", ..., "delta": {"role": "assistant", ...}}\\n\\n
    data: {... "delta": {"content": "<token>"} ...}\\n\\n          (one per token)
    data: {... "delta": {}, "finish_reason": "stop"}\\n\\n
    data: {... "choices": [], "usage": {...}}\\n\\n               (if stream_options asks)
    data: [DONE]\\n\\n

Every request is recorded (`requests`: path, lower-cased headers, JSON body) and `received` is set.
Switches, set by a test before the request:

- `fail_status` / `fail_times`: answer the next `fail_times` requests (-1: all) with that
  status and an OpenAI-style JSON error body (message `fail_message`), with a
  ``retry-after-ms: 1`` header so SDK retries are immediate;
- `disconnect_after`: close the socket after that many token chunks, without the final
  zero-length chunk (a mid-stream disconnect the client can detect);
- `pause_after`: after that many token chunks, wait until `release` is set (then finish the
  stream) or the client closes the connection (then set `disconnected`). The pause ends on
  its own after `PAUSE_LIMIT_S` by closing the connection, so a broken test cannot hang.

`finished` is set when a stream was sent to the end; `disconnected` when the server saw the
client go away in the middle of a stream.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["PAUSE_LIMIT_S", "FakeOpenAIServer", "RecordedRequest"]

PAUSE_LIMIT_S = 10.0


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def prompt(self) -> str:
        """The content of the last message (the user prompt)."""
        return str(self.body["messages"][-1]["content"])


class _Disconnected(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- helpers ---------------------------------------------------------------------------
    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _chunk(self, text: str) -> None:
        data = text.encode()
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except OSError as exc:
            raise _Disconnected from exc

    def _event(self, payload: Any) -> None:
        self._chunk("data: " + (payload if isinstance(payload, str) else json.dumps(payload)))
        # the blank line that ends the SSE message travels in its own HTTP chunk, so the
        # client's decoder must reassemble messages across reads
        self._chunk("\n\n")

    def _wait_release_or_disconnect(self) -> bool:
        """True when released; False when the client closed (or the pause limit passed)."""
        owner = self.server.owner
        limit = time.monotonic() + PAUSE_LIMIT_S
        while not owner.release.is_set():
            if time.monotonic() > limit:
                return False
            readable, _, _ = select.select([self.connection], [], [], 0.02)
            if readable:
                try:
                    peek = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    peek = b""
                if not peek:
                    owner.disconnected.set()
                    return False
        return True

    # -- the endpoint ----------------------------------------------------------------------
    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = raw.decode(errors="replace")
        with owner.lock:
            owner.requests.append(
                RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            failing = owner.fail_status is not None and owner.fail_times != 0
            if failing and owner.fail_times > 0:
                owner.fail_times -= 1
        owner.received.set()

        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        if failing:
            assert owner.fail_status is not None
            error = {"message": owner.fail_message, "type": "server_error", "code": None}
            self._json(owner.fail_status, {"error": error}, {"retry-after-ms": "1"})
            return
        if not isinstance(body, dict) or body.get("stream") is not True:
            self._json(400, {"error": {"message": "only stream=true is served here"}})
            return
        try:
            self._stream(body)
        except _Disconnected:
            owner.disconnected.set()
            self.close_connection = True

    def _stream(self, body: dict[str, Any]) -> None:
        owner = self.server.owner
        model = body.get("model", "?")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [choice],
            }

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._event(chunk({"role": "assistant", "content": ""}))
        for index, token in enumerate(owner.tokens):
            if owner.disconnect_after is not None and index == owner.disconnect_after:
                self.close_connection = True  # no terminating chunk: the body is cut short
                return
            paused = owner.pause_after is not None and index == owner.pause_after
            if paused and not self._wait_release_or_disconnect():
                self.close_connection = True
                return
            self._event(chunk({"content": token}))
        self._event(chunk({}, "stop"))
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            usage = {"prompt_tokens": 7, "completion_tokens": len(owner.tokens), "total_tokens": 9}
            self._event({**chunk({}), "choices": [], "usage": usage})
        self._event("[DONE]")
        self._chunk("")  # the zero-length chunk that ends the body
        owner.finished.set()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeOpenAIServer


class FakeOpenAIServer:
    """The server (see the module docstring); use as a context manager."""

    def __init__(self, tokens: list[str] | tuple[str, ...] = ("Hello", ",", " world", "!")):
        self.tokens = list(tokens)
        self.requests: list[RecordedRequest] = []
        self.lock = threading.Lock()
        self.fail_status: int | None = None
        self.fail_times = -1
        self.fail_message = "the model crashed"
        self.disconnect_after: int | None = None
        self.pause_after: int | None = None
        self.release = threading.Event()
        self.received = threading.Event()
        self.finished = threading.Event()
        self.disconnected = threading.Event()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},  # how soon shutdown() is noticed
            name="fake-openai",
            daemon=True,
        )

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()  # unblock paused handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
