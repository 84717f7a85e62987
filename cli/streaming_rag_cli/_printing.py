"""`EventPrinter`: how one job's events look on a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from streaming_rag import EventType, StreamEvent

__all__ = ["EventPrinter"]


class EventPrinter:
    """Prints one job's events: chunk text to `out` as it comes (flushed), the bracketed
    retrieval / done / error lines to `err`. `exit_code` is 0 after GENERATION_DONE, else 1;
    `shown` counts the events shown."""

    def __init__(self, job_id: str, out: TextIO | None = None, err: TextIO | None = None):
        self.job_id = job_id
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.exit_code = 1
        self.shown = 0
        self.answer = ""
        self._first_chunk: float | None = None
        self._mid_line = False

    def _end_line(self) -> None:
        if self._mid_line:
            self.out.write("\n")
            self.out.flush()
            self._mid_line = False

    def _note(self, text: str) -> None:
        self._end_line()
        print(text, file=self.err, flush=True)

    def show(self, event: StreamEvent) -> None:
        self.shown += 1
        data = event.data
        if event.type is EventType.CHUNK:
            if self._first_chunk is None:
                self._first_chunk = event.latency
            self.answer += data
            self.out.write(data)
            self.out.flush()
            self._mid_line = bool(data) and not data.endswith("\n")
        elif event.type is EventType.RETRIEVAL_DONE:
            sources = [
                str(doc["metadata"]["source"])
                for doc in data.get("docs", [])
                if isinstance(doc, dict)
                and isinstance(doc.get("metadata"), dict)
                and "source" in doc["metadata"]
            ]
            where = f": {', '.join(sources)}" if sources else ""
            self._note(
                f"[retrieved {data.get('num_docs', 0)} docs in {event.latency:.3f} s{where}]"
            )
        elif event.type is EventType.GENERATION_DONE:
            first = (
                "" if self._first_chunk is None else f", first chunk at {self._first_chunk:.3f} s"
            )
            self._note(f"[done in {event.latency:.3f} s{first}, job {self.job_id}]")
            self.exit_code = 0
        elif event.type is EventType.ERROR:
            self._note(f"[error at {data.get('stage', '?')}: {data.get('msg', data)}]")
            self.exit_code = 1

    def follow(self, events: Iterable[StreamEvent]) -> int:
        """Show every event of `events`; return the exit code."""
        try:
            for event in events:
                self.show(event)
        finally:
            self._end_line()
        return self.exit_code
