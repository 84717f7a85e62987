"""Consuming an async generator from synchronous code: a private loop in a daemon thread.

`iterate_in_thread(factory)` runs `factory()` (an async iterator) on a new event loop in a
daemon thread and hands every item to the calling thread through a stdlib `queue.Queue`
(blocking `get()`, no polling), ending with a `None` sentinel. An exception raised inside is
re-raised in the caller's thread as the same object (same type, same traceback).

Items travel in batches: while the consumer is busy, the loop appends what it produces to an
open batch (under a lock, ~0.1 µs). When the consumer wants more, the open batch goes onto the
queue (put by the consumer itself if it has items, else by the producer with its next item),
so an item is never held back while someone waits for it, and a fast producer costs one queue
hand-off (~3.5 µs here, plus a thread wake-up) per batch instead of per item. Every put
happens under the same lock, so batches, the error and the sentinel keep their order.

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
    lock = threading.Lock()
    shared: dict[str, Any] = {"batch": [], "waiting": False}
    ready = threading.Event()
    state: dict[str, Any] = {}

    def hand_off(item: Any) -> None:
        """Producer side: add to the open batch; queue it if the consumer is waiting."""
        with lock:
            batch = shared["batch"]
            batch.append(item)
            if shared["waiting"]:
                shared["waiting"] = False
                shared["batch"] = []
                q.put(batch)

    def finish(last: Any) -> None:
        """Producer side: queue the open batch (if any), then `last`."""
        with lock:
            batch, shared["batch"] = shared["batch"], []
            if batch:
                q.put(batch)
            q.put(last)

    async def pump() -> None:
        agen = factory()
        async with aclosing(agen):
            async for item in agen:
                hand_off(item)

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
                finish([_Raised(exc)])
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            ready.set()
            loop.close()
            finish(None)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            with lock:  # queue the open batch ourselves, or let the producer queue its next
                batch = shared["batch"]
                if batch:
                    shared["batch"] = []
                    q.put(batch)
                else:
                    shared["waiting"] = True
            batch = q.get()
            if batch is None:
                finished = True
                return
            for item in batch:
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
