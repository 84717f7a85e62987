"""One timer for the whole generation step, armed only while waiting on the LLM.

`asyncio.wait_for` per token costs ~14 µs and `asyncio.timeout` ~6 µs; this costs a flag write
before and after each wait. The timer is scheduled once (`loop.call_at`); when it fires it
cancels the consuming task only if that task is, at that moment, awaiting the LLM (`waiting`).
If it fires while the consumer holds an event (the generator is suspended at `yield`), nothing
is cancelled: the pipeline checks `expired` before its next wait and stops there. A
cancellation the deadline did not cause propagates unchanged.

Usage (inline in the hot loop, no extra coroutine frame per token)::

    deadline = Deadline(timeout)
    try:
        while not deadline.expired:
            deadline.waiting = True
            try:
                token = await source.__anext__()
            except asyncio.CancelledError:
                if deadline.claim_cancel():
                    ...  # the deadline passed while waiting
                raise
            finally:
                deadline.waiting = False
    finally:
        deadline.disarm()
"""

from __future__ import annotations

import asyncio

__all__ = ["Deadline"]


class Deadline:
    """A deadline `timeout` seconds from now for the current task."""

    __slots__ = ("_fired", "_handle", "_loop", "_task", "waiting", "when")

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - the pipeline always runs in a task
            raise RuntimeError("Deadline must be created inside a task")
        self._task = task
        self.waiting = False
        self._fired = False
        self.when = self._loop.time() + timeout
        self._handle = self._loop.call_at(self.when, self._fire)

    def _fire(self) -> None:
        if self.waiting:
            self._fired = True
            self._task.cancel()

    @property
    def expired(self) -> bool:
        """True once the deadline has passed (checked against the loop clock)."""
        return self._loop.time() >= self.when

    def claim_cancel(self) -> bool:
        """On `CancelledError`: True if the deadline caused it (and it is now absorbed)."""
        if self._fired:
            self._fired = False
            return self._task.uncancel() == 0
        return False

    def disarm(self) -> None:
        """Cancel the timer; call when the generation step ends, however it ends."""
        self._handle.cancel()
