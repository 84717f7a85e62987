"""Abandoned answers: the opt-in `abandon_after_s` policy (`WorkerConfig`).

A running job whose watchers (`streaming_rag.wire.presence`: every subscriber following it,
an open SSE stream of the bridge included) have counted zero for `abandon_after_s` seconds is
cancelled on its worker, and ends with ``ERROR {"stage": "generation", "msg": "Abandoned:
nobody watching"}`` (status ``cancelled``), through the path a cancellation takes. The count
is read by the job's heartbeat (every `heartbeat_s`), so the policy acts within one heartbeat
after the window. The window starts when the job starts: a job submitted by a caller that
never watches it is abandoned `abandon_after_s` after its start. A count that cannot be read
(an outage) neither abandons nor counts as watched.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from streaming_rag.wire import JobKeys
from streaming_rag.wire.presence import WATCHERS, watchers_call

__all__ = ["ABANDONED_MSG", "Unwatched"]

logger = logging.getLogger("streaming_rag.worker")

#: The message of an abandoned job's terminal ERROR (stage ``generation``).
ABANDONED_MSG = "Abandoned: nobody watching"


class Unwatched:
    """How long one running job has had no watcher; `abandoned()` is asked by its heartbeat."""

    def __init__(self, redis: Any, keys: JobKeys, after_s: float) -> None:
        self.keys = keys
        self.after_s = after_s
        self.watched_at = time.monotonic()  # the window starts at the job's start
        self._script = redis.register_script(WATCHERS)

    @classmethod
    def for_job(cls, redis: Any, keys: JobKeys, after_s: float | None) -> Unwatched | None:
        """The tracker of a job, or None when the policy is off (`after_s` None)."""
        return None if after_s is None else cls(redis, keys, after_s)

    async def abandoned(self) -> bool:
        """Read the job's watchers; True once nobody has watched for `after_s`."""
        call = watchers_call(self.keys)
        try:
            count = int(await self._script(keys=call.keys, args=call.args))
        except Exception as exc:  # an outage: unknown, so neither way
            logger.debug("watchers of job %s unknown: %s", self.keys.job_id, exc)
            return False
        now = time.monotonic()
        if count > 0:
            self.watched_at = now
            return False
        if now - self.watched_at < self.after_s:
            return False
        logger.info(
            "job %s: nobody watched it for %g s; abandoning it", self.keys.job_id, self.after_s
        )
        return True
