"""Consuming an async generator from synchronous code: a private loop in a daemon thread.

`iterate_in_thread(factory)` runs `factory()` (an async iterator) on a new event loop in a
daemon thread and hands every item to the calling thread through a stdlib `queue.Queue`
(blocking `get()`, no polling), ending with a `None` sentinel. An exception raised inside is
re-raised in the caller's thread as the same object (same type, same traceback).

Closing the returned generator early (a `break`, `.close()`, or garbage collection) cancels the
background task, which closes the async generator (and so the LLM stream), then joins the
thread, so no thread or loop outlives the iteration. It works whether or not the calling
thread is itself running an event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Generator
from contextlib import aclosing
from typing import Any, TypeVar

__all__ = ["iterate_in_thread"]

T = TypeVar("T")
logger = logging.getLogger("streaming_rag")

#: How long closing waits for the background loop to finish its clean-up before giving up
#: (it only takes this long if the LLM's own `aclose()` hangs).
JOIN_TIMEOUT_S = 10.0


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def iterate_in_thread(
    factory: Callable[[], AsyncGenerator[T, None]], *, name: str = "streaming-rag-sync"
) -> Generator[T, None, None]:
    """Yield the items of the async iterator `factory()` from a private loop in a thread."""
    q: queue.Queue[Any] = queue.Queue()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def pump() -> None:
        agen = factory()
        async with aclosing(agen):
            async for item in agen:
                q.put(item)

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(pump())
            state["loop"], state["task"] = loop, task
            ready.set()
            try:
                loop.run_until_complete(task)
            except asyncio.CancelledError:
                pass  # closed early by the consumer: nobody reads what follows
            except BaseException as exc:
                q.put(_Raised(exc))
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            ready.set()
            loop.close()
            q.put(None)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            item = q.get()
            if item is None:
                finished = True
                return
            if type(item) is _Raised:
                finished = True
                raise item.exc
            yield item
    finally:
        if not finished:
            ready.wait()
            loop, task = state.get("loop"), state.get("task")
            if loop is not None and task is not None:
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:  # the loop already closed: the thread is ending
                    pass
        thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():
            logger.warning(
                "background stream thread %s still running %.0fs after close; "
                "an LLM stream's aclose() may be hanging",
                thread.name,
                JOIN_TIMEOUT_S,
            )
