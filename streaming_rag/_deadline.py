"""One timer for the whole generation step, armed only while waiting on the LLM.

`asyncio.wait_for` per token costs ~14 µs and `asyncio.timeout` ~6 µs; this costs a flag write
before and after each wait. The timer is scheduled once (`loop.call_at`); when it fires it
cancels the task that is, at that moment, awaiting the LLM (`waiting` holds that task). If it
fires while the consumer holds an event (the generator is suspended at `yield`), nothing is
cancelled: the pipeline checks `expired` before its next wait and stops there. A cancellation
the deadline did not cause propagates unchanged.

`waiting` is set to the *current* task before every wait, not fixed at construction: an async
generator may be resumed from a different task each time (e.g. `asyncio.wait_for(agen.
__anext__(), t)` wraps each call in a new task on Python 3.11), and the deadline must cancel
the task that is actually waiting.

Usage (inline in the hot loop, no extra coroutine frame per token)::

    deadline = Deadline(timeout)
    try:
        while not deadline.expired:
            deadline.waiting = asyncio.current_task()
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
from typing import Any

__all__ = ["Deadline"]


class Deadline:
    """A deadline `timeout` seconds from now for the generation step."""

    __slots__ = ("_fired", "_handle", "_loop", "waiting", "when")

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.waiting: asyncio.Task[Any] | None = None  # the task awaiting the LLM right now
        self._fired: asyncio.Task[Any] | None = None  # the task the deadline cancelled
        self.when = self._loop.time() + timeout
        self._handle = self._loop.call_at(self.when, self._fire)

    def _fire(self) -> None:
        task = self.waiting
        if task is not None:
            self._fired = task
            task.cancel()

    @property
    def expired(self) -> bool:
        """True once the deadline has passed (checked against the loop clock)."""
        return self._loop.time() >= self.when

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
