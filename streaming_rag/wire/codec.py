"""msgpack encoding of events (stream entries) and of arq jobs.

An event is one stream entry with one field, ``e``, holding msgpack of
``{"v": 1, "t": <EventType value>, "d": <data>, "l": <latency>}``.

Encoding is lenient about payloads (a retriever's metadata may hold datetimes or numpy
numbers): a value msgpack cannot carry is sent as its `str()`, so a worker never fails on
it. Decoding is strict: an entry that is not msgpack, lacks a field, has an unknown version
or event type, or a CHUNK whose data is not a string raises `EventDecodeError` naming the job
and the entry id.
"""

from __future__ import annotations

from typing import Any

import msgpack

from streaming_rag import EventType, StreamEvent
from streaming_rag._events import TERMINAL_EVENT_TYPES, chunk_event

from ..exceptions import EventDecodeError

__all__ = [
    "FIELD",
    "WIRE_VERSION",
    "decode_entries",
    "decode_raw_entry",
    "decode_entry",
    "decode_event",
    "encode_event",
    "pack_job",
    "unpack_job",
]

WIRE_VERSION = 1
FIELD = b"e"
_TYPES = {t.value: t for t in EventType}
_unpackb = msgpack.unpackb


def _lenient(obj: Any) -> Any:
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def encode_event(type_: EventType | str, data: Any, latency: float) -> bytes:
    """msgpack of one event (see the module docstring)."""
    packed: bytes = msgpack.packb(
        {"v": WIRE_VERSION, "t": str(type_), "d": data, "l": latency},
        default=_lenient,
        use_bin_type=True,
    )
    return packed


def decode_event(job_id: str, entry_id: str, payload: bytes) -> StreamEvent:
    """Decode one entry's ``e`` field into a `StreamEvent` whose `id` is `entry_id`."""
    try:
        obj = _unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise EventDecodeError(job_id, entry_id, f"not valid msgpack ({exc})") from None
    if not isinstance(obj, dict):
        raise EventDecodeError(job_id, entry_id, f"expected a map, got {type(obj).__name__}")
    missing = [k for k in ("v", "t", "d", "l") if k not in obj]
    if missing:
        raise EventDecodeError(job_id, entry_id, f"missing field(s) {', '.join(missing)}")
    if obj["v"] != WIRE_VERSION:
        raise EventDecodeError(job_id, entry_id, f"unsupported wire version {obj['v']!r}")
    type_ = _TYPES.get(obj["t"])
    if type_ is None:
        raise EventDecodeError(job_id, entry_id, f"unknown event type {obj['t']!r}")
    data, latency = obj["d"], obj["l"]
    if type_ is EventType.CHUNK and not isinstance(data, str):
        raise EventDecodeError(job_id, entry_id, "a chunk's data must be a string")
    if type_ is not EventType.CHUNK and not isinstance(data, dict):
        raise EventDecodeError(job_id, entry_id, f"{type_.value} data must be a map")
    if isinstance(latency, bool) or not isinstance(latency, int | float):
        raise EventDecodeError(job_id, entry_id, f"latency must be a number, got {latency!r}")
    return StreamEvent(type_, data, round(float(latency), 4), entry_id)


def decode_entries(job_id: str, entries: Any) -> list[StreamEvent]:
    """Decode raw XRANGE/XREAD entries ``[[id, [b"e", payload]], ...]`` (no redis-py
    response callback applied); stops after a terminal event.

    The hot path of every reader: the page's payloads are unpacked in one streaming pass and
    well-formed chunks are built without per-entry calls. Anything unusual (a corrupt entry,
    another field layout, a non-chunk event) goes through `decode_raw_entry`, which checks
    everything and names the entry in its error.
    """
    objs: list[Any] | None = None
    if all(len(f) == 2 and f[0] == FIELD for _, f in entries):
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(b"".join(f[1] for _, f in entries))
        try:
            objs = list(unpacker)
        except Exception:
            objs = None  # a corrupt entry: decode one by one to find and name it
        if objs is not None and len(objs) != len(entries):
            objs = None
    out: list[StreamEvent] = []
    append = out.append
    for index, (entry_id, fields) in enumerate(entries):
        obj = objs[index] if objs is not None else None
        if (
            type(obj) is dict
            and obj.get("t") == "chunk"
            and obj.get("v") == WIRE_VERSION
            and type(obj.get("d")) is str
            and type(obj.get("l")) is float
            and len(obj) == 4
        ):
            eid = entry_id.decode() if type(entry_id) is bytes else entry_id
            append(chunk_event(obj["d"], obj["l"], eid))
            continue
        event = decode_raw_entry(job_id, entry_id, fields)
        append(event)
        if event.type in TERMINAL_EVENT_TYPES:
            break
    return out


def decode_raw_entry(job_id: str, entry_id: bytes | str, fields: Any) -> StreamEvent:
    """Decode one raw entry: its id and its flat field list ``[b"e", payload]``."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    if len(fields) == 2 and fields[0] == FIELD:
        return decode_event(job_id, eid, fields[1])
    if len(fields) % 2:
        raise EventDecodeError(job_id, eid, "entry fields are not name/value pairs")
    return decode_entry(job_id, eid, dict(zip(fields[::2], fields[1::2], strict=True)))


def decode_entry(job_id: str, entry_id: bytes | str, fields: dict[Any, Any]) -> StreamEvent:
    """Decode one `(entry_id, fields)` pair as returned by XRANGE/XREAD."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    payload = fields.get(FIELD)
    if payload is None:
        payload = fields.get("e")
    if payload is None:
        raise EventDecodeError(job_id, eid, "entry has no 'e' field")
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogateescape")
    return decode_event(job_id, eid, payload)


def pack_job(obj: dict[str, Any]) -> bytes:
    """arq job serializer: msgpack, never pickle. Unknown objects (only arq's failure results
    carry them) are stored as their `repr`."""
    packed: bytes = msgpack.packb(obj, default=repr, use_bin_type=True)
    return packed


def unpack_job(data: bytes) -> dict[str, Any]:
    """arq job deserializer (msgpack); arq turns its errors into a failed job."""
    result: dict[str, Any] = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return result
