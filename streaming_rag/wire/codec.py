"""msgpack encoding of events (stream entries) and of arq jobs.

An event is one stream entry with one field, ``e``, holding msgpack of the array
``[2, <EventType value>, <data>, <latency>]`` (wire format v2, `WIRE_VERSION`, what
`encode_event` writes). The map ``{"v": 1, "t": <type>, "d": <data>, "l": <latency>}`` of
v1 (written by older workers) still decodes, so a stream may mix both.

Encoding is lenient about payloads (a retriever's metadata may hold datetimes or numpy
numbers): a value msgpack cannot carry is sent as its `str()`, so a worker never fails on
it. Decoding is strict: an entry that is not msgpack, has another shape (not a 4-item array
nor a map with the four v1 fields), an unknown version or event type, or a CHUNK whose data
is not a string raises `EventDecodeError` naming the job and the entry id.
"""

from __future__ import annotations

from typing import Any

import msgpack

from streaming_rag import EventType, StreamEvent
from streaming_rag._events import TERMINAL_EVENT_TYPES, chunk_event, chunk_events

from ..exceptions import EventDecodeError

__all__ = [
    "FIELD",
    "WIRE_V1",
    "WIRE_VERSION",
    "decode_entries",
    "decode_raw_entry",
    "decode_entry",
    "decode_event",
    "encode_event",
    "encode_event_v1",
    "pack_job",
    "unpack_job",
]

#: The version `encode_event` writes: a 4-item array.
WIRE_VERSION = 2
#: The older map layout, still decoded.
WIRE_V1 = 1
FIELD = b"e"
_TYPES = {t.value: t for t in EventType}
_CHUNK = EventType.CHUNK.value
_unpackb = msgpack.unpackb


def _lenient(obj: Any) -> Any:
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def encode_event(type_: EventType | str, data: Any, latency: float) -> bytes:
    """msgpack of one event in wire format v2: ``[2, type, data, latency]``."""
    packed: bytes = msgpack.packb(
        [WIRE_VERSION, str(type_), data, latency], default=_lenient, use_bin_type=True
    )
    return packed


def encode_event_v1(type_: EventType | str, data: Any, latency: float) -> bytes:
    """msgpack of one event in the older v1 map layout (what workers before v2 wrote); for
    tests and the replay bench only: nothing in the project writes it any more."""
    packed: bytes = msgpack.packb(
        {"v": WIRE_V1, "t": str(type_), "d": data, "l": latency},
        default=_lenient,
        use_bin_type=True,
    )
    return packed


def decode_event(job_id: str, entry_id: str, payload: bytes) -> StreamEvent:
    """Decode one entry's ``e`` field (v2 array or v1 map) into a `StreamEvent` whose `id`
    is `entry_id`; every check of the module docstring is made."""
    try:
        obj = _unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:
        raise EventDecodeError(job_id, entry_id, f"not valid msgpack ({exc})") from None
    if isinstance(obj, list):
        if len(obj) != 4:
            raise EventDecodeError(
                job_id, entry_id, f"expected [version, type, data, latency], got {len(obj)} items"
            )
        version, name, data, latency = obj
        if version != WIRE_VERSION:
            raise EventDecodeError(job_id, entry_id, f"unsupported wire version {version!r}")
    elif isinstance(obj, dict):
        missing = [k for k in ("v", "t", "d", "l") if k not in obj]
        if missing:
            raise EventDecodeError(job_id, entry_id, f"missing field(s) {', '.join(missing)}")
        if obj["v"] != WIRE_V1:
            raise EventDecodeError(job_id, entry_id, f"unsupported wire version {obj['v']!r}")
        name, data, latency = obj["t"], obj["d"], obj["l"]
    else:
        raise EventDecodeError(
            job_id, entry_id, f"expected an array (v2) or a map (v1), got {type(obj).__name__}"
        )
    type_ = _TYPES.get(name) if isinstance(name, str) else None
    if type_ is None:
        raise EventDecodeError(job_id, entry_id, f"unknown event type {name!r}")
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

    The hot path of every reader. A page of v2 entries is checked column by column (every
    entry one ``e`` field, every payload exactly one msgpack 4-item array of version 2; the
    chunks' data strings and latencies floats) and its chunks are built with
    `chunk_events`, with no Python-level step per entry; its few other events go through
    `decode_raw_entry`. Anything unusual (a corrupt entry, another field layout, v1 maps)
    sends the whole page one entry at a time, which checks everything and names the entry
    in its error. A well-formed chunk's float latency is taken as written (writers round
    it to 4 decimals); `decode_event` rounds every latency it checks.
    """
    if not entries:
        return []
    page = _page(job_id, entries)
    return page if page is not None else _one_by_one(job_id, entries)


def _ids(ids: list[Any]) -> list[Any]:
    try:
        return list(map(bytes.decode, ids))
    except (TypeError, UnicodeDecodeError):
        return [i.decode() if isinstance(i, bytes) else i for i in ids]


def _page(job_id: str, entries: Any) -> list[StreamEvent] | None:
    """The column-wise decoding of a page of v2 entries (see `decode_entries`), or None when
    the page is not one (nothing is raised here: the caller decodes it one by one).

    Columns are taken with list comprehensions rather than ``zip(*rows)``, which allocates
    an iterator per row: fewer allocations, fewer garbage-collector passes over the page."""
    n = len(entries)
    try:
        fields = [e[1] for e in entries]
        payloads = [f[1] for f in fields]  # every field list has >= 2 items ...
        if sum(map(len, fields)) != 2 * n:  # ... so exactly 2: one field each
            return None
        if [f[0] for f in fields].count(FIELD) != n:
            return None
        objs = list(map(_unpackb, payloads))  # one object per payload, or it raises
        if set(map(type, objs)) != {list}:
            return None
        latencies = [o[3] for o in objs]  # every array has >= 4 items ...
        if sum(map(len, objs)) != 4 * n:  # ... so exactly 4
            return None
        versions = [o[0] for o in objs]
        types = [o[1] for o in objs]
        data = [o[2] for o in objs]
    except Exception:  # any other shape: not a page of v2 entries
        return None
    if versions.count(WIRE_VERSION) != n:
        return None
    ids = [e[0] for e in entries]
    if types.count(_CHUNK) == n:  # a page of chunks alone (every page but the ends)
        if set(map(type, data)) != {str} or set(map(type, latencies)) != {float}:
            return None
        return chunk_events(data, latencies, _ids(ids))
    out: list[StreamEvent] = []
    start = 0
    for i in [i for i, t in enumerate(types) if t != _CHUNK] + [n]:
        if i > start:
            texts, lats = data[start:i], latencies[start:i]
            if set(map(type, texts)) != {str} or set(map(type, lats)) != {float}:
                return None
            out += chunk_events(texts, lats, _ids(ids[start:i]))
        if i == n:
            break
        event = decode_raw_entry(job_id, ids[i], fields[i])
        out.append(event)
        if event.type in TERMINAL_EVENT_TYPES:
            break
        start = i + 1
    return out


def _one_by_one(job_id: str, entries: Any) -> list[StreamEvent]:
    """Each entry on its own: well-formed v1 chunks (older workers' streams) cheaply, anything
    else through `decode_raw_entry`'s checks. Stops after a terminal event."""
    out: list[StreamEvent] = []
    append = out.append
    for entry_id, fields in entries:
        if len(fields) == 2 and fields[0] == FIELD:
            try:
                obj = _unpackb(fields[1])
            except Exception:
                obj = None
            if (
                type(obj) is dict
                and obj.get("t") == _CHUNK
                and obj.get("v") == WIRE_V1
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
