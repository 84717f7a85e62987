"""Stream entry ids: ``<ms>-<seq>``, decided by the worker (never by the server's ``*``) so a
retried or re-appended event keeps the id subscribers already hold as their cursor."""

from __future__ import annotations

import re

from ..exceptions import InvalidRequest

__all__ = ["EntryIds", "parse_entry_id", "validate_cursor"]

_ENTRY_ID = re.compile(r"(\d{1,20})(?:-(\d{1,20}))?")


def parse_entry_id(entry_id: str) -> tuple[int, int]:
    """``"<ms>-<seq>"`` (or ``"<ms>"``) as a tuple that orders like the stream. Raises
    `ValueError` for anything else."""
    match = _ENTRY_ID.fullmatch(entry_id)
    if match is None:
        raise ValueError(f"not a stream entry id: {entry_id!r}")
    return int(match.group(1)), int(match.group(2) or 0)


def validate_cursor(cursor: object) -> str:
    """Return `cursor` if it is a stream entry id (``"<ms>-<seq>"`` or ``"<ms>"``), else
    raise `InvalidRequest` saying what a cursor looks like."""
    if not isinstance(cursor, str) or _ENTRY_ID.fullmatch(cursor) is None:
        raise InvalidRequest(
            f"after must be a stream entry id like '1700000000000-0' (the `id` of an event "
            f"already received), got {cursor!r}"
        )
    return cursor


class EntryIds:
    """Monotonic entry ids for one job: ``<now_ms>-0``, or ``<last_ms>-<seq+1>`` when the
    clock has not moved on (or went back), so ids only grow."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: tuple[int, int] = (0, 0)

    def next(self, now_ms: int) -> str:
        ms, seq = self.last
        self.last = (now_ms, 0) if now_ms > ms else (ms, seq + 1)
        return f"{self.last[0]}-{self.last[1]}"
