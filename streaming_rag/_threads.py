"""Running blocking user code off the event loop, one daemon thread per call or per stream.

Dedicated daemon threads rather than the loop's default executor: that pool is small
(`min(32, cpus + 4)`), so a few stalled retrievers would queue every other stream behind them,
and `loop.shutdown_default_executor()` would wait for a call that already timed out. A daemon
thread that outlives its timeout is simply abandoned: its result is dropped, and it does not
keep the interpreter alive.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["ThreadedIterator", "run_in_thread"]

T = TypeVar("T")
logger = logging.getLogger("streaming_rag")


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # cancelled by a timeout while the thread ran
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop closed while the thread ran: nobody is waiting
        pass


async def run_in_thread(func: Callable[..., T], *args: Any, name: str) -> T:
    """Call `func(*args)` in a new daemon thread and await its result or exception."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            result = ctx.run(func, *args)
        except BaseException as exc:  # handed to the awaiting task, re-raised there
            _post(loop, _resolve, fut, False, exc)
        else:
            _post(loop, _resolve, fut, True, result)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await fut


_ITEM, _END, _FAIL = 0, 1, 2


def _close_quietly(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # nobody awaits this thread: log, do not raise
            logger.warning("closing the sync LLM stream raised; ignored", exc_info=True)


class ThreadedIterator:
    """Iterate a blocking iterator in one daemon thread and consume it from the event loop.

    The thread appends to a deque and wakes the loop only when no wake-up is already pending,
    so a fast producer costs one `call_soon_threadsafe` per burst, not per item. The buffer is
    bounded (`maxsize`): a producer that gets far ahead waits for the consumer.

    `aclose()` asks the thread to stop; it never waits for it (a stalled LLM would hang the
    caller). The thread closes the underlying iterator (`.close()`, when it has one) as soon as
    its current `next()` returns, so the source is always closed, even when it is
    mid-iteration at the moment of `aclose()`.
    """

    def __init__(
        self, open_iter: Callable[[], Iterable[Any]], *, name: str, maxsize: int = 4096
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._open_iter = open_iter
        self._buf: deque[tuple[int, Any]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._waiter: asyncio.Future[None] | None = None
        self._space = threading.Event()
        self._maxsize = maxsize
        self._stopped = threading.Event()
        self._ctx = contextvars.copy_context()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    # -- producer side (the thread) -------------------------------------------------------
    def _put(self, kind: int, value: Any) -> None:
        with self._lock:
            self._buf.append((kind, value))
            if self._wake_pending:
                return
            self._wake_pending = True
        _post(self._loop, self._wake)

    def _run(self) -> None:
        # The source is closed *before* END / FAIL is posted, so the pipeline never yields its
        # terminal event while the LLM stream is still open; when the consumer stopped early,
        # it is closed as soon as the current `next()` returns.
        iterator: Iterator[Any] | None = None
        closed = False
        try:
            iterator = iter(self._ctx.run(self._open_iter))
            for item in iterator:
                if self._stopped.is_set():
                    break
                if len(self._buf) >= self._maxsize:
                    self._space.clear()
                    while len(self._buf) >= self._maxsize and not self._stopped.is_set():
                        self._space.wait(0.1)
                    if self._stopped.is_set():
                        break
                self._put(_ITEM, item)
            else:
                closed = True
                _close_quietly(iterator)
                self._put(_END, None)
        except BaseException as exc:  # re-raised in the consumer
            if not closed:
                closed = True
                _close_quietly(iterator)
            self._put(_FAIL, exc)
        finally:
            if not closed:
                _close_quietly(iterator)

    # -- consumer side (the event loop) ---------------------------------------------------
    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> ThreadedIterator:
        return self

    async def __anext__(self) -> Any:
        while True:
            if self._buf:
                kind, value = self._buf.popleft()
                if not self._space.is_set() and len(self._buf) < self._maxsize // 2:
                    self._space.set()
                if kind == _ITEM:
                    return value
                if kind == _END:
                    self._buf.appendleft((kind, value))
                    raise StopAsyncIteration
                raise value
            waiter = self._loop.create_future()
            self._waiter = waiter
            try:
                if not self._buf:
                    await waiter
            finally:
                self._waiter = None

    async def aclose(self) -> None:
        """Tell the thread to stop and close the source; returns without waiting."""
        self._stopped.set()
        self._space.set()
