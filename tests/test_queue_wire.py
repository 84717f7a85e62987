"""The wire layer without a server: keys, event codec, job codec, request validation."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from streaming_rag import EventType, StreamEvent
from streaming_rag.wire import (
    EventDecodeError,
    InvalidRequest,
    JobKeys,
    codec,
    decode_entries,
    decode_entry,
    encode_event,
    pack_job,
    parse_request,
    unpack_job,
    validate_job_id,
)
from streaming_rag.wire.models import JOB_FUNCTION, arq_job_record


def test_every_key_of_a_job_shares_one_cluster_hash_tag():
    keys = JobKeys("srag", "abc123")
    assert keys.events == "srag:{b28.352}:abc123:events"
    assert keys.lease == "srag:{b28.352}:abc123:lease"
    assert keys.meta == "srag:{b28.352}:abc123:job"
    tags = {k.split("{", 1)[1].split("}", 1)[0] for k in (keys.events, keys.lease, keys.meta)}
    assert tags == {"b28.352"}


def test_prefix_names_the_queue_and_namespaces_arq_job_ids():
    a, b = JobKeys("one", "x"), JobKeys("two", "x")
    assert a.queue == "one:queue" and b.queue == "two:queue"
    assert a.arq_job != b.arq_job
    assert a.arq_job == "arq:job:one:x"


@pytest.mark.parametrize(
    "event",
    [
        StreamEvent(EventType.RETRIEVAL_START, {"query": "q"}, 0.0),
        StreamEvent(EventType.RETRIEVAL_DONE, {"num_docs": 1, "docs": [{"content": "d"}]}, 0.01),
        StreamEvent(EventType.GENERATION_START, {"prompt_chars": 42}, 0.02),
        StreamEvent(EventType.CHUNK, "héllo ", 0.0301),
        StreamEvent(EventType.GENERATION_DONE, {"total_latency": 0.5}, 0.5),
        StreamEvent(EventType.ERROR, {"msg": "Generation timed out", "stage": "generation"}, 1.0),
    ],
)
def test_event_round_trip_keeps_type_data_latency_and_sets_id(event):
    payload = encode_event(event.type, event.data, event.latency)
    assert msgpack.unpackb(payload) == [2, event.type.value, event.data, event.latency]  # v2
    expected = StreamEvent(event.type, event.data, event.latency, "1-0")
    assert decode_entry("job", b"1-0", {b"e": payload}) == expected
    assert decode_entries("job", [[b"1-0", [b"e", payload]]]) == [expected]


def _v1(type_: str, data: Any, latency: float) -> bytes:
    """An entry as a worker before wire format v2 wrote it, by hand."""
    return msgpack.packb({"v": 1, "t": type_, "d": data, "l": latency}, use_bin_type=True)


def _trace(encode: Callable[[str, Any, float], bytes], chunks: int) -> list[Any]:
    """A raw XRANGE page of a whole answer: head, `chunks` chunks, GENERATION_DONE."""
    events = [
        ("retrieval_start", {"query": "q"}, 0.0),
        ("retrieval_done", {"num_docs": 1, "docs": [{"content": "d", "score": 0.5}]}, 0.001),
        ("generation_start", {"prompt_chars": 9}, 0.002),
        *(("chunk", f"t{i} ", round(0.01 + i / 1e4, 4)) for i in range(chunks)),
        ("generation_done", {"total_latency": 0.5}, 0.5),
    ]
    return [[f"{i + 1}-0".encode(), [b"e", encode(*e)]] for i, e in enumerate(events)]


def _one_by_one(page: list[Any]) -> list[StreamEvent]:
    return [decode_entry("job", eid, dict([fields])) for eid, fields in page]  # type: ignore


def test_v1_entries_of_older_workers_still_decode() -> None:
    v1, v2 = _trace(_v1, 50), _trace(encode_event_of_str, 50)
    expected = _one_by_one(v2)
    assert expected[3] == StreamEvent(EventType.CHUNK, "t0 ", 0.01, "4-0")
    assert expected[1].data["docs"] == [{"content": "d", "score": 0.5}]  # lists stay lists
    assert _one_by_one(v1) == expected
    assert decode_entries("job", v1) == expected
    assert decode_entries("job", v2) == expected
    assert all(type(e) is StreamEvent for e in decode_entries("job", v2))
    assert codec._page("job", v2) == expected  # v2 takes the column-wise path
    assert codec._page("job", v1) is None  # v1 is decoded one entry at a time


def test_a_stream_mixing_v1_and_v2_entries_decodes_in_order() -> None:
    v1, v2 = _trace(_v1, 20), _trace(encode_event_of_str, 20)
    expected = decode_entries("job", v2)
    for mixed in (
        [v1[i] if i % 2 else v2[i] for i in range(len(v2))],  # alternating
        v1[:10] + v2[10:],  # an upgrade mid-stream
        v2[:-1] + v1[-1:],  # the terminal from another writer
    ):
        assert decode_entries("job", mixed) == expected


def test_a_page_stops_after_its_terminal_event_and_ids_may_be_text() -> None:
    page = _trace(encode_event_of_str, 5)
    tail = [[b"99-0", [b"e", encode_event(EventType.CHUNK, "after the end", 1.0)]]]
    events = decode_entries("job", page + tail)
    assert events[-1].type is EventType.GENERATION_DONE and len(events) == len(page)
    as_text = [[eid.decode(), fields] for eid, fields in page]  # a client decoding replies
    assert decode_entries("job", as_text) == events
    only_chunks = page[3:-1]
    assert [e.id for e in decode_entries("job", only_chunks)] == [f"{i}-0" for i in range(4, 9)]


def test_unusual_but_valid_chunks_take_the_checked_path() -> None:
    page = _trace(encode_event_of_str, 3)
    # an integer latency (as Lua's cmsgpack packs whole numbers): valid, rounded as ever
    page[4] = [b"5-0", [b"e", msgpack.packb([2, "chunk", "t1 ", 3])]]
    events = decode_entries("job", page)
    assert events[4] == StreamEvent(EventType.CHUNK, "t1 ", 3.0, "5-0")
    assert type(events[4].latency) is float


def encode_event_of_str(type_: str, data: Any, latency: float) -> bytes:
    return encode_event(EventType(type_), data, latency)


def test_unpackable_payload_values_are_sent_as_text():
    import datetime

    when = datetime.datetime(2026, 1, 2, 3, 4, 5)
    payload = encode_event(EventType.RETRIEVAL_DONE, {"num_docs": 1, "docs": [{"t": when}]}, 0.1)
    decoded = decode_entry("job", "2-0", {b"e": payload})
    assert decoded.data["docs"][0]["t"] == str(when)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"e": b"\xc1not msgpack"}, "not valid msgpack"),
        ({b"x": b"1"}, "no 'e' field"),
        ({b"e": msgpack.packb({"v": 1, "t": "chunk", "d": "x"})}, "missing field(s) l"),
        ({b"e": msgpack.packb({"v": 9, "t": "chunk", "d": "x", "l": 0})}, "wire version 9"),
        ({b"e": msgpack.packb({"v": 1, "t": "nope", "d": "x", "l": 0})}, "unknown event type"),
        ({b"e": msgpack.packb({"v": 1, "t": "chunk", "d": 3, "l": 0})}, "must be a string"),
        ({b"e": msgpack.packb({"v": 2, "t": "chunk", "d": "x", "l": 0})}, "wire version 2"),
        ({b"e": msgpack.packb([1, 2])}, "expected [version, type, data, latency], got 2"),
        ({b"e": msgpack.packb([2, "chunk", "x", 0.1, 5])}, "got 5 items"),
        ({b"e": msgpack.packb([1, "chunk", "x", 0.1])}, "wire version 1"),
        ({b"e": msgpack.packb([3, "chunk", "x", 0.1])}, "wire version 3"),
        ({b"e": msgpack.packb([2, "nope", "x", 0.1])}, "unknown event type 'nope'"),
        ({b"e": msgpack.packb([2, ["chunk"], "x", 0.1])}, "unknown event type ['chunk']"),
        ({b"e": msgpack.packb([2, "chunk", b"x", 0.1])}, "must be a string"),
        ({b"e": msgpack.packb([2, "error", "x", 0.1])}, "error data must be a map"),
        ({b"e": msgpack.packb([2, "chunk", "x", "soon"])}, "latency must be a number"),
        ({b"e": msgpack.packb([2, "chunk", "x", True])}, "latency must be a number"),
        ({b"e": msgpack.packb(7)}, "expected an array (v2) or a map (v1), got int"),
        ({b"e": msgpack.packb([2, "chunk", "x", 0.1]) + b"\x00"}, "not valid msgpack"),
    ],
)
def test_decoding_is_strict_and_names_job_and_entry(fields, reason):
    with pytest.raises(EventDecodeError) as info:
        decode_entry("job42", b"7-1", fields)
    assert "job42" in str(info.value) and "7-1" in str(info.value)
    assert reason in str(info.value)
    assert info.value.job_id == "job42" and info.value.entry_id == "7-1"
    page = _trace(encode_event_of_str, 8)
    page[6] = [b"7-1", [x for item in fields.items() for x in item]]  # raw: flat pairs
    with pytest.raises(EventDecodeError) as in_page:  # inside a page: the same error
        decode_entries("job42", page)
    assert str(in_page.value) == str(info.value)


def test_job_records_are_msgpack_never_pickle():
    record = arq_job_record("abc", parse_request("what?", {"k": [1, 2]}), 123)
    job = unpack_job(record)
    assert job == {
        "t": None,
        "f": JOB_FUNCTION,
        "a": [],
        "k": {"job_id": "abc", "request": {"v": 1, "query": "what?", "context": {"k": [1, 2]}}},
        "et": 123,
    }
    with pytest.raises(Exception):  # noqa: B017 - any msgpack error: pickle is not accepted
        unpack_job(pickle.dumps({"f": "os.system"}))
    assert pack_job({"x": 1}) == msgpack.packb({"x": 1})


@pytest.mark.parametrize(
    ("query", "context", "message"),
    [
        ("", None, "query must be a non-empty string"),
        ("   ", None, "query must be a non-empty string"),
        (42, None, "query must be a str, got int"),
        (None, None, "query must be a str, got NoneType"),
        ("x" * 11, None, "query is 11 characters; the limit is 10"),
        ("ok", {"f": object()}, "context must hold only msgpack-able values"),
        ("ok", ["not", "a", "dict"], "context must be a dict or None, got list"),
    ],
)
def test_invalid_requests_are_refused_with_a_clear_message(query, context, message):
    with pytest.raises(InvalidRequest) as info:
        parse_request(query, context, max_query_chars=10)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("job_id", ["", "a b", "x" * 129, "{tag}", 5])
def test_bad_job_ids_are_refused(job_id):
    with pytest.raises(InvalidRequest, match="job_id must be"):
        validate_job_id(job_id)


def test_a_corrupt_entry_inside_a_page_is_named_and_the_rest_decode():
    from streaming_rag.wire import decode_entries

    good = encode_event(EventType.CHUNK, "ok ", 0.5)
    done = encode_event(EventType.GENERATION_DONE, {"total_latency": 1.0}, 1.0)
    page = [[b"1-0", [b"e", good]], [b"2-0", [b"e", b"\xc1"]], [b"3-0", [b"e", good]]]
    with pytest.raises(EventDecodeError) as info:
        decode_entries("job7", page)
    assert info.value.entry_id == "2-0"
    events = decode_entries("job7", [page[0], [b"4-0", [b"e", done]], page[2]])
    assert [(e.type, e.id) for e in events] == [
        (EventType.CHUNK, "1-0"),
        (EventType.GENERATION_DONE, "4-0"),
    ]  # stops after the terminal event
    assert events[0] == StreamEvent(EventType.CHUNK, "ok ", 0.5, "1-0")
