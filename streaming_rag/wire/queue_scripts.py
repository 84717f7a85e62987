"""The queue server's scripts: what a job does there (ENQUEUE, CLAIM, DEQUEUE), never touching a
job's own keys unless one server holds both (then CLAIM also STARTs, in the same call).

With the events on another server (a Redis Cluster, say), each state change is two calls, job
side first (see docs/wire-format.md, "Two places"): SUBMIT then ENQUEUE; CLAIM then START;
CHECK or CANCEL then DEQUEUE (and the cancel PUBLISH). The queue server is standalone or
Sentinel-managed, never a cluster (arq cannot run on one), so its scripts may touch several of
its keys.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._lua import _NOW, ScriptCall
from .keys import (
    ARQ_IN_PROGRESS_KEY_PREFIX,
    ARQ_JOB_KEY_PREFIX,
    ARQ_RETRY_KEY_PREFIX,
    JobKeys,
)

__all__ = [
    "CLAIM",
    "CLAIM_FN",
    "CLAIM_KEYS_PER_JOB",
    "TAKE",
    "DEQUEUE",
    "ENQUEUE",
    "ENQUEUE_FN",
    "claim_call",
    "dequeue_call",
    "enqueue_call",
    "take_call",
]

#: Lua: enqueue(arq_job, queue, wake, index, deadline) with SUBMIT's ARGV. Writes the same arq
#: records as arq's `enqueue_job` (so stock arq workers run the job too), pushes the arq job id
#: as a wake-up token for an idle worker, and indexes the job for the workers' sweep (due at
#: its start deadline).
ENQUEUE_FN = """
local function enqueue(arq_job, queue, wake, index, deadline, token)
  redis.call('SET', arq_job, ARGV[2], 'PX', ARGV[5])
  redis.call('ZADD', queue, ARGV[3], ARGV[1])
  redis.call('RPUSH', wake, token)
  redis.call('LTRIM', wake, -1024, -1)
  redis.call('PEXPIRE', wake, 60000)
  redis.call('ZADD', index, deadline, ARGV[7])
end
"""

#: KEYS arq_job, queue, wake, index; ARGV as SUBMIT's. The queue half of a SUBMIT whose job
#: hash lives on another server, run after SUBMIT returned 1. A retry after a lost reply finds
#: the arq record (the first attempt enqueued) and returns 0 without another wake-up. Returns
#: 1 when it enqueued.
ENQUEUE = (
    _NOW
    + ENQUEUE_FN
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
enqueue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now + tonumber(ARGV[4]), ARGV[1])
return 1
"""
)


def enqueue_call(
    keys: JobKeys,
    *,
    record: bytes,
    now_ms: int,
    start_timeout_ms: int,
    record_ttl_ms: int,
    nonce: str,
) -> ScriptCall:
    """ENQUEUE the job SUBMIT created on the events server (same arguments as `submit_call`)."""
    return ScriptCall(
        [keys.arq_job, keys.queue, keys.wake, keys.index],
        [keys.arq_job_id, record, now_ms, start_timeout_ms, record_ttl_ms, nonce, keys.job_id],
    )


#: KEYS queue, arq_job, arq_in_progress, arq_retry; ARGV arq_job_id. The queue half of a CHECK
#: or CANCEL that ended a job on another server: the job leaves arq's queue and records.
#: Idempotent. Returns how many keys it removed or deleted.
DEQUEUE = """
return redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
"""


def dequeue_call(keys: JobKeys) -> ScriptCall:
    """DEQUEUE the job (after its CHECK or CANCEL ended it on the events server)."""
    return ScriptCall(
        [keys.queue, keys.arq_job, keys.arq_in_progress, keys.arq_retry], [keys.arq_job_id]
    )


#: Lua: claim(id, score, in_progress, retry, record, meta, lease, ttl_ms, lease_ms, worker)
#: claims one queued arq job (its in-progress marker, exactly as arq sets it), STARTs it when
#: `meta` is not empty, INCRs its try counter and appends id, score, verdict, record, tries to
#: `out`. Returns nothing (a job in progress elsewhere is skipped).
CLAIM_FN = """
local out = {}
local function claim(id, score, in_progress, retry, record, meta, lease, ttl_ms, lease_ms, worker)
  if not redis.call('SET', in_progress, '1', 'NX', 'PX', ttl_ms) then return end
  local verdict = 'unstarted'
  if meta ~= '' then
    local s = redis.call('HGET', meta, 'status')
    if s == 'queued' then
      redis.call('HSET', meta, 'status', 'running', 'started_ms', now, 'worker', worker)
      redis.call('PERSIST', meta)
      redis.call('SET', lease, worker, 'PX', lease_ms)
      verdict = 'ok'
    elseif s then
      verdict = s
    else
      verdict = 'missing'
    end
  end
  local tries = redis.call('INCR', retry)
  redis.call('EXPIRE', retry, 88400)
  out[#out + 1] = id
  out[#out + 1] = score
  out[#out + 1] = verdict
  out[#out + 1] = redis.call('GET', record)
  out[#out + 1] = tries
end
"""

#: Worker: claim arq jobs and start them, in one round trip (arq's `start_jobs` spends four
#: per job: WATCH, EXISTS, ZSCORE, MULTI/EXEC; then the job's START would be a fifth).
#: KEYS queue, then per job `CLAIM_KEYS_PER_JOB` keys: arq in-progress, arq retry, arq record,
#: meta, lease; ARGV in_progress_ttl_ms, now_ms, lease_ms, worker_name, then one arq job id
#: per job. A job is claimed when it is still queued in arq, due, and not in progress
#: elsewhere; its arq in-progress key is set exactly as arq sets it. Then START runs for it.
#: It also does what arq's `run_job` does first (INCR the try counter, GET the record), so the
#: job can run at once. When the events live on another server (`with_start=False`), every
#: job's meta and lease are declared as empty names, the script starts nothing and its verdict
#: is 'unstarted': the worker runs START on the events server next. Returns a flat list:
#: arq_job_id, score, start verdict ('ok' or the status found; 'missing' when the job hash is
#: gone; 'unstarted' for an arq job that is not one of ours or was not started here), arq
#: record (or false), try count, ...
CLAIM = (
    _NOW
    + CLAIM_FN
    + """
for i = 5, #ARGV do
  local id = ARGV[i]
  local k = 1 + (i - 5) * 5
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= tonumber(ARGV[2]) then
    claim(id, score, KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5],
          ARGV[1], ARGV[3], ARGV[4])
  end
end
return out
"""
)

#: Worker: the claim folded into the wake-up. An idle worker sends, in one pipeline, ``BLMOVE
#: {prefix}:wake {prefix}:wake:taken LEFT RIGHT <timeout>`` and then this script; the server
#: runs the script as soon as the BLMOVE returns (or times out), so the wake-up reply carries
#: the claimed job: one round trip from the idle worker to a started job.
#: KEYS queue, taken; ARGV in_progress_ttl_ms, lease_ms, worker_name, free slots, with_start
#: ('1' or '0'), then arq's in-progress, retry and job key prefixes. Pops up to `free` tokens
#: from `taken` (any worker's: a token is a hint, the in-progress marker is the claim, so a
#: job is claimed at most once whoever pops it) and CLAIMs each job still in the queue (a
#: token is pushed at enqueue, for a job due at once: no due check). A token is
#: ``<arq job id>`` or ``<arq job id>\t<job key base>`` (SUBMIT's, when one server holds the
#: job's keys too): with the base and `with_start`, the job is STARTed here as CLAIM does.
#: Tokens left in `taken` (a worker gone between its two commands) expire with it (60 s).
#: Returns CLAIM's flat list.
TAKE = (
    _NOW
    + CLAIM_FN
    + """
local tokens = redis.call('LPOP', KEYS[2], tonumber(ARGV[4]))
if tokens then
  for _, token in ipairs(tokens) do
    local id, base = token, nil
    local tab = string.find(token, '\t', 1, true)
    if tab then
      id, base = string.sub(token, 1, tab - 1), string.sub(token, tab + 1)
    end
    local meta, lease = '', ''
    if base and ARGV[5] == '1' then meta, lease = base .. ':job', base .. ':lease' end
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score then
      claim(id, score, ARGV[6] .. id, ARGV[7] .. id, ARGV[8] .. id, meta, lease,
            ARGV[1], ARGV[2], ARGV[3])
    end
  end
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], 60000) end
end
return out
"""
)


def take_call(
    queue: str,
    taken: str,
    *,
    in_progress_ttl_ms: int,
    lease_ms: int,
    worker: str,
    free: int,
    with_start: bool = True,
) -> ScriptCall:
    """TAKE up to `free` wake-up tokens that the pipelined BLMOVE moved to `taken`, and CLAIM
    (and START, `with_start`) their jobs for `worker`. The queue server is never a cluster,
    so the script may name keys it derives from the tokens."""
    return ScriptCall(
        [queue, taken],
        [
            in_progress_ttl_ms,
            lease_ms,
            worker,
            free,
            "1" if with_start else "0",
            ARQ_IN_PROGRESS_KEY_PREFIX,
            ARQ_RETRY_KEY_PREFIX,
            ARQ_JOB_KEY_PREFIX,
        ],
    )


#: How many KEYS `claim_call` declares per job (after the queue).
CLAIM_KEYS_PER_JOB = 5


def claim_call(
    prefix: str,
    queue: str,
    arq_job_ids: Sequence[str],
    *,
    in_progress_ttl_ms: int,
    now_ms: int,
    lease_ms: int,
    worker: str,
    with_start: bool = True,
) -> ScriptCall:
    """CLAIM and START the arq jobs `arq_job_ids` of `queue` for `worker`. An arq job that is
    not one of `prefix`'s (another function on the same queue) is claimed for arq alone: its
    meta and lease keys are declared as empty names, which the script never touches; so are
    every job's with `with_start=False` (the events live on another server)."""
    keys: list[str] = [queue]
    for arq_id in arq_job_ids:
        job = JobKeys.from_arq_job_id(prefix, arq_id) if with_start else None
        keys += [
            ARQ_IN_PROGRESS_KEY_PREFIX + arq_id,
            ARQ_RETRY_KEY_PREFIX + arq_id,
            ARQ_JOB_KEY_PREFIX + arq_id,
            "" if job is None else job.meta,
            "" if job is None else job.lease,
        ]
    return ScriptCall(keys, [in_progress_ttl_ms, now_ms, lease_ms, worker, *arq_job_ids])
