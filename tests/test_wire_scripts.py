"""Each Lua script's contract: the typed builder gives its KEYS and ARGV, and the script touches
no key it was not given (so a Redis Cluster can route it). Pure logic: no server."""

from __future__ import annotations

import re

import pytest
from redis.crc import key_slot

from streaming_rag.wire import JobKeys
from streaming_rag.wire import scripts as s
from streaming_rag.wire.keys import BUCKET_TAGS, BUCKETS

KEYS = JobKeys("pfx", "job-1")

#: Commands whose first argument is not a key.
NO_KEY = {"TIME", "PUBLISH"}
#: Local names the scripts bind to KEYS entries (helper parameters and locals).
KEY_LOCALS = {
    "meta",
    "events",
    "lease",
    "arq_job",
    "queue",
    "wake",
    "index",
    "in_progress",
    "retry",
    "record",
}
SCRIPTS = {
    "SUBMIT": s.SUBMIT,
    "START": s.START,
    "PUBLISH": s.PUBLISH,
    "HEARTBEAT": s.HEARTBEAT,
    "CHECK": s.CHECK,
    "CANCEL": s.CANCEL,
    "CLAIM": s.CLAIM,
    "ENQUEUE": s.ENQUEUE,
    "DEQUEUE": s.DEQUEUE,
}
#: Scripts for the queue server alone (never a cluster), which may name keys they derive:
#: TAKE claims the jobs its wake-up tokens name.
QUEUE_ONLY = {"TAKE": s.TAKE}


def key_arguments(source: str) -> list[tuple[str, str]]:
    """(command, first argument) of every redis.call in `source`."""
    return re.findall(r"redis\.call\('(\w+)'(?:,\s*([^,)]+))?", source)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_key_a_script_touches_is_declared(name: str) -> None:
    calls = key_arguments(SCRIPTS[name])
    assert calls, "the pattern found no redis.call: the check would pass vacuously"
    for command, first in calls:
        if command in NO_KEY:
            continue
        first = first.strip()
        declared = first.startswith("KEYS[") or first in KEY_LOCALS
        assert declared, f"{name}: {command} touches {first!r}, which is not one of its KEYS"


def test_take_derives_only_arq_keys_and_the_job_keys_its_token_names() -> None:
    calls = key_arguments(s.TAKE)
    firsts = {first.strip() for command, first in calls if command not in NO_KEY}
    assert firsts == {"KEYS[1]", "KEYS[2]", "in_progress", "retry", "record", "meta", "lease"}
    assert "ARGV[6] .. id, ARGV[7] .. id, ARGV[8] .. id" in s.TAKE
    call = s.take_call(
        "pfx:queue",
        "pfx:wake:taken",
        in_progress_ttl_ms=1,
        lease_ms=2,
        worker="w",
        free=3,
        with_start=False,
    )
    assert call.keys == ["pfx:queue", "pfx:wake:taken"]
    assert call.args[3:8] == [3, "0", "arq:in-progress:", "arq:retry:", "arq:job:"]


def test_the_check_catches_a_key_built_inside_a_script() -> None:
    bad = "redis.call('SET', 'arq:in-progress:' .. id, '1')"
    ((command, first),) = key_arguments(bad)
    assert command == "SET" and not first.startswith("KEYS[")


@pytest.mark.parametrize(
    "call",
    [
        s.start_call(KEYS, lease_ms=3000, worker="w"),
        s.heartbeat_call(KEYS, lease_ms=3000, worker="w", retention_ms=1),
        s.publish_call(
            KEYS, [("1-0", b"a"), ("1-1", b"b")], expected_top="0-0", lease_ms=3, retention_ms=1
        ),
        s.submit_call(
            KEYS,
            record=b"r",
            now_ms=5,
            start_timeout_ms=30,
            record_ttl_ms=99,
            nonce="n",
            with_queue=False,
        ),
        s.check_call(KEYS, retention_ms=7, with_queue=False),
        s.cancel_call(KEYS, retention_ms=7, with_queue=False),
    ],
    ids=["START", "HEARTBEAT", "PUBLISH", "SUBMIT", "CHECK", "CANCEL"],
)
def test_job_scripts_stay_in_the_job_slot(call: s.ScriptCall) -> None:
    assert len({key_slot(k.encode()) for k in call.keys}) == 1
    assert all(KEYS.job_id in k for k in call.keys), "only the job's own keys"


@pytest.mark.parametrize(
    "call",
    [
        s.enqueue_call(
            KEYS, record=b"r", now_ms=5, start_timeout_ms=30, record_ttl_ms=99, nonce="n"
        ),
        s.dequeue_call(KEYS),
        s.claim_call(
            "pfx",
            KEYS.queue,
            [KEYS.arq_job_id],
            in_progress_ttl_ms=1,
            now_ms=2,
            lease_ms=3,
            worker="w",
            with_start=False,
        ),
    ],
    ids=["ENQUEUE", "DEQUEUE", "CLAIM"],
)
def test_queue_side_scripts_touch_no_job_key(call: s.ScriptCall) -> None:
    job_keys = {KEYS.meta, KEYS.events, KEYS.lease}
    assert call.keys and not job_keys & set(call.keys)


def test_jobs_of_one_bucket_share_a_slot_and_buckets_spread() -> None:
    a = JobKeys("pfx", "job-1")
    same = next(
        JobKeys("other", f"j{i}") for i in range(10_000) if JobKeys("x", f"j{i}").bucket == a.bucket
    )
    assert key_slot(a.events.encode()) == key_slot(same.events.encode())
    buckets = {JobKeys("pfx", f"j{i}").bucket for i in range(2_000)}
    assert buckets == set(range(BUCKETS))
    assert a.events == f"pfx:{{b{a.bucket:02d}.{BUCKET_TAGS[a.bucket].split('.')[1]}}}:job-1:events"


def test_publish_call_carries_its_events_in_order() -> None:
    call = s.publish_call(
        KEYS,
        [("5-0", b"e1"), ("5-1", b"e2")],
        expected_top="4-3",
        lease_ms=3000,
        retention_ms=9000,
        final_status="done",
    )
    assert call.keys == [KEYS.events, KEYS.meta, KEYS.lease]
    assert call.args == [3000, "done", 9000, "4-3", "5-0", b"e1", "5-1", b"e2"]


def test_submit_check_and_cancel_calls() -> None:
    sub = s.submit_call(
        KEYS, record=b"r", now_ms=5, start_timeout_ms=30, record_ttl_ms=99, nonce="n"
    )
    assert sub.keys == [KEYS.meta, KEYS.events, KEYS.arq_job, KEYS.queue, KEYS.wake, KEYS.index]
    assert sub.args == [KEYS.arq_job_id, b"r", 5, 30, 99, "n", KEYS.job_id]
    check = s.check_call(KEYS, retention_ms=7)
    assert check.keys == [
        KEYS.meta,
        KEYS.lease,
        KEYS.events,
        KEYS.queue,
        KEYS.arq_job,
        KEYS.arq_in_progress,
        KEYS.arq_retry,
    ]
    assert check.args == [KEYS.arq_job_id, 7]
    cancel = s.cancel_call(KEYS, retention_ms=7)
    assert cancel.keys == [KEYS.meta, KEYS.events, KEYS.queue, KEYS.arq_job]
    assert cancel.args == [KEYS.arq_job_id, 7, KEYS.cancel_channel, KEYS.job_id]


def test_claim_declares_five_keys_per_job_and_none_for_foreign_arq_jobs() -> None:
    other = JobKeys("pfx", "job-2")
    call = s.claim_call(
        "pfx",
        KEYS.queue,
        [KEYS.arq_job_id, "cron:nightly", other.arq_job_id],
        in_progress_ttl_ms=10,
        now_ms=20,
        lease_ms=30,
        worker="w",
    )
    per = s.CLAIM_KEYS_PER_JOB
    assert len(call.keys) == 1 + 3 * per
    assert call.keys[0] == KEYS.queue
    assert call.keys[1 : 1 + per] == [
        KEYS.arq_in_progress,
        KEYS.arq_retry,
        KEYS.arq_job,
        KEYS.meta,
        KEYS.lease,
    ]
    assert call.keys[1 + per : 1 + 2 * per] == [
        "arq:in-progress:cron:nightly",
        "arq:retry:cron:nightly",
        "arq:job:cron:nightly",
        "",
        "",
    ]
    assert call.keys[1 + 2 * per :][3:] == [other.meta, other.lease]
    assert call.args == [10, 20, 30, "w", KEYS.arq_job_id, "cron:nightly", other.arq_job_id]


def test_job_keys_from_arq_job_id() -> None:
    assert JobKeys.from_arq_job_id("pfx", "pfx:job-1") == KEYS
    assert JobKeys.from_arq_job_id("pfx", "pfx:") is None
    assert JobKeys.from_arq_job_id("pfx", "other:job-1") is None


def test_bucket_tags_sit_evenly_over_the_slots() -> None:
    from streaming_rag.wire.keys import BUCKET_TAGS, bucket_tag

    assert len(BUCKET_TAGS) == BUCKETS == len(set(BUCKET_TAGS))
    width = 16384 // BUCKETS
    for bucket in range(BUCKETS):
        slot = key_slot(bucket_tag(bucket).encode())
        assert bucket * width + width // 4 <= slot < (bucket + 1) * width - width // 4
    # three evenly split shards (valkey-cli's ranges) get 21-22 buckets each
    shares = [0, 0, 0]
    for bucket in range(BUCKETS):
        shares[min(2, key_slot(bucket_tag(bucket).encode()) * 3 // 16384)] += 1
    assert sorted(shares) == [21, 21, 22]
