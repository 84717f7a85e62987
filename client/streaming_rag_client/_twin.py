"""`_Twin`: what the sync and async transports (`_transport`) share: the queue and events
clients, the registered scripts, and each call's KEYS and ARGV for one server or two."""

from __future__ import annotations

import logging
from typing import Any

from streaming_rag.wire import JobKeys
from streaming_rag.wire.presence import WATCH, WATCHERS
from streaming_rag.wire.scripts import (
    CANCEL,
    CHECK,
    DEQUEUE,
    ENQUEUE,
    SUBMIT,
    ScriptCall,
    cancel_call,
    check_call,
)

from ._core import SubmitPlan
from ._outages import Outages, is_cluster, raw_view, raw_xread

__all__ = ["ENDED", "_Twin", "cleanup_failed"]

logger = logging.getLogger("streaming_rag.client")
#: CHECK / CANCEL verdicts after which the job leaves the queue (DEQUEUE, when apart).
ENDED = ("lost", "withdrawn")


class _Twin:
    """What both twins share: the two clients, the scripts, and each call's KEYS and ARGV."""

    def __init__(
        self,
        client: Any,
        url: str,
        retention_ms: int,
        *,
        reconnect_s: float,
        events: Any,
        events_url: str | None,
    ) -> None:
        self.client = client
        self.events = client if events is None else events
        self.split = events is not None and events is not client
        self.cluster = is_cluster(self.events)
        self.raw = raw_view(self.events)
        self.url = url
        self.retention_ms = retention_ms
        self.outages = Outages(url, reconnect_s)
        self.event_outages = Outages(events_url or url, reconnect_s) if self.split else self.outages
        self._submit = self.events.register_script(SUBMIT)
        self._check = self.events.register_script(CHECK)
        self._cancel = self.events.register_script(CANCEL)
        self._enqueue = client.register_script(ENQUEUE)
        self._dequeue = client.register_script(DEQUEUE)
        self._watch = self.events.register_script(WATCH)
        self._watchers = self.events.register_script(WATCHERS)

    def _submit_call(self, plan: SubmitPlan) -> ScriptCall:
        return plan.job_call if self.split else plan.call

    def _check_call(self, keys: JobKeys) -> ScriptCall:
        return check_call(keys, retention_ms=self.retention_ms, with_queue=not self.split)

    def _cancel_call(self, keys: JobKeys) -> ScriptCall:
        return cancel_call(keys, retention_ms=self.retention_ms, with_queue=not self.split)

    def _xread(self, reply: Any) -> Any:
        return raw_xread(reply) if self.cluster else reply


def cleanup_failed(keys: JobKeys, exc: BaseException) -> None:
    logger.warning(
        "job %s ended, but removing it from the queue failed (%s): a worker drops it when it "
        "claims it",
        keys.job_id,
        exc,
    )
