"""Fault injection for the tests: a loopback TCP proxy whose connections can be cut, and whose
new connections can be refused or held, to play a Redis outage for the clients behind it.

The proxy runs its own asyncio loop in a daemon thread, so it keeps forwarding while a test's
sync client blocks the main thread, and every method may be called from any thread (each waits
at most `WAIT_S` for the proxy's loop to act).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["HOST", "WAIT_S", "TcpProxy"]

HOST = "127.0.0.1"
WAIT_S = 10.0  # liveness guard: every proxy operation finishes within milliseconds
_T = TypeVar("_T")


class _Link:
    """One proxied connection: the accepted client side and the upstream side."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Close both sides at once (RST: no goodbye), as a crashed or restarted server does
        to its clients' sockets."""
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    """Listens on 127.0.0.1 (a free port), forwards each connection to `target_port`.

    - `cut()`: close every open connection now (both sides); keep listening, so clients can
      reconnect at once (a dropped connection, or a server that restarts in no time).
    - `pause()`: the server is down: open connections are cut and new ones are refused (accepted
      and closed at once, before any byte is forwarded), or with ``hold=True`` accepted and held
      unanswered until `resume()` (a server that does not answer yet).
    - `resume()`: forward again (held connections are connected upstream now).

    `accepted` counts the connections accepted so far. Use as a context manager (or `start()` /
    `close()`); `close()` drops every connection and stops the thread.
    """

    def __init__(self, target_port: int, *, target_host: str = HOST) -> None:
        self.target = (target_host, target_port)
        self.accepted = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._mode = "forward"  # or "refuse" / "hold"
        self._resumed: asyncio.Event | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return self._port

    def url(self, *, userinfo: str = "", db: int = 0) -> str:
        """``redis://[userinfo@]127.0.0.1:PORT/db`` through this proxy."""
        at = f"{userinfo}@" if userinfo else ""
        return f"redis://{at}{HOST}:{self.port}/{db}"

    @property
    def open_links(self) -> int:
        """How many proxied connections are open now."""
        return len(self._links)

    # -- control (any thread) --------------------------------------------------------------------
    def start(self) -> TcpProxy:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._port = self._run(self._listen())
        return self

    def cut(self) -> int:
        """Close every open connection now; return how many were cut."""
        return self._run(self._cut())

    def pause(self, *, hold: bool = False) -> int:
        """Cut every open connection and refuse (or, with `hold`, hold) new ones until
        `resume()`; return how many were cut."""
        return self._run(self._pause("hold" if hold else "refuse"))

    def resume(self) -> None:
        """Forward new connections again, and the held ones now."""
        self._run(self._resume())

    def close(self) -> None:
        """Stop listening, drop every connection, stop the proxy's thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                self._run(self._shutdown())
            loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT_S)

    # -- the proxy's loop ------------------------------------------------------------------------
    async def _listen(self) -> int:
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _cut(self) -> int:
        links, self._links = self._links, set()
        for link in links:
            link.abort()
        return len(links)

    async def _pause(self, mode: str) -> int:
        assert self._resumed is not None
        self._mode = mode
        self._resumed.clear()
        return await self._cut()

    async def _resume(self) -> None:
        assert self._resumed is not None
        self._mode = "forward"
        self._resumed.set()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        if self._resumed is not None:
            self._resumed.set()  # held connections wake, find themselves cut, and return
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=WAIT_S)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._mode == "refuse":
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            if self._mode == "hold":
                assert self._resumed is not None
                await self._resumed.wait()  # cut() or close() may abort us meanwhile
                if link not in self._links:
                    return
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), WAIT_S
            )
        except (OSError, asyncio.CancelledError):
            link.abort()
            self._links.discard(link)
            return
        link.upstream = up_writer
        if link not in self._links:  # cut while connecting upstream
            link.abort()
            return
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link)),
            asyncio.create_task(self._pump(up_reader, writer, link)),
        ]

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Copy one direction until it ends; then close the whole link."""
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if link in self._links:
                self._links.discard(link)
                link.abort()
