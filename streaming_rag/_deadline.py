"""One timer for the whole generation step, armed only while waiting on the LLM.

`asyncio.wait_for` per token costs ~14 µs and `asyncio.timeout` ~6 µs; this costs a flag write
before and after each wait. The timer is scheduled once (`loop.call_at`); when it fires it
cancels the task that is, at that moment, awaiting the LLM (`waiting` holds that task). If it
fires while the consumer holds an event (the generator is suspended at `yield`), nothing is
cancelled: the timer sets `expired`, which the pipeline checks before its next wait. A cancellation
the deadline did not cause propagates unchanged.

`waiting` is set to the *current* task before every wait, not fixed at construction: an async
generator may be resumed from a different task each time (e.g. `asyncio.wait_for(agen.
__anext__(), t)` wraps each call in a new task on Python 3.11), and the deadline must cancel
the task that is actually waiting.

Usage (inline in the hot loop, no extra coroutine frame per token)::

    deadline = Deadline(timeout)
    try:
        while not deadline.expired:
            deadline.waiting = asyncio.current_task()  # see current_task_getter
            try:
                token = await source.__anext__()
            except asyncio.CancelledError:
                if deadline.claim_cancel():
                    ...  # the deadline passed while waiting
                raise
            finally:
                deadline.waiting = None
    finally:
        deadline.disarm()
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["Deadline", "current_task_getter"]


def current_task_getter(loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Task[Any] | None]:
    """A zero-argument `asyncio.current_task()` for `loop`, as cheap as the runtime allows.

    Called once per token. On Python 3.11 `asyncio.current_task` is pure Python (~0.3 µs);
    a bound `dict.get` on the C registry it reads costs ~0.05 µs. From 3.12 on it is in C.
    """
    registry = getattr(asyncio.tasks, "_current_tasks", None)
    if sys.version_info < (3, 12) and isinstance(registry, dict):
        return functools.partial(registry.get, loop)
    return asyncio.current_task


class Deadline:
    """A deadline `timeout` seconds from now for the generation step."""

    __slots__ = ("_fired", "_handle", "_loop", "expired", "waiting", "when")

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.waiting: asyncio.Task[Any] | None = None  # the task awaiting the LLM right now
        self._fired: asyncio.Task[Any] | None = None  # the task the deadline cancelled
        self.expired = False  # set by the timer: a flag read per token, no clock call
        self.when = self._loop.time() + timeout
        self._handle = self._loop.call_at(self.when, self._fire)

    def _fire(self) -> None:
        self.expired = True
        task = self.waiting
        if task is not None:
            self._fired = task
            task.cancel()

    def claim_cancel(self) -> bool:
        """On `CancelledError`: True if the deadline caused it (and it is now absorbed)."""
        task = self._fired
        if task is not None:
            self._fired = None
            return task.uncancel() == 0
        return False

    def disarm(self) -> None:
        """Cancel the timer; call when the generation step ends, however it ends."""
        self._handle.cancel()
