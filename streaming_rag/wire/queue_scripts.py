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
    "CLAIM_KEYS_PER_JOB",
    "DEQUEUE",
    "ENQUEUE",
    "ENQUEUE_FN",
    "claim_call",
    "dequeue_call",
    "enqueue_call",
]

#: Lua: enqueue(arq_job, queue, wake, index, deadline) with SUBMIT's ARGV. Writes the same arq
#: records as arq's `enqueue_job` (so stock arq workers run the job too), pushes the arq job id
#: as a wake-up token for an idle worker, and indexes the job for the workers' sweep (due at
#: its start deadline).
ENQUEUE_FN = """
local function enqueue(arq_job, queue, wake, index, deadline)
  redis.call('SET', arq_job, ARGV[2], 'PX', ARGV[5])
  redis.call('ZADD', queue, ARGV[3], ARGV[1])
  redis.call('RPUSH', wake, ARGV[1])
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
enqueue(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now + tonumber(ARGV[4]))
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
    + """
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local k = 1 + (i - 5) * 5
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= tonumber(ARGV[2]) then
    if redis.call('SET', KEYS[k + 1], '1', 'NX', 'PX', ARGV[1]) then
      local verdict = 'unstarted'
      local meta, lease = KEYS[k + 4], KEYS[k + 5]
      if meta ~= '' then
        local s = redis.call('HGET', meta, 'status')
        if s == 'queued' then
          redis.call('HSET', meta, 'status', 'running', 'started_ms', now, 'worker', ARGV[4])
          redis.call('PERSIST', meta)
          redis.call('SET', lease, ARGV[4], 'PX', ARGV[3])
          verdict = 'ok'
        elseif s then
          verdict = s
        else
          verdict = 'missing'
        end
      end
      local tries = redis.call('INCR', KEYS[k + 2])
      redis.call('EXPIRE', KEYS[k + 2], 88400)
      out[#out + 1] = id
      out[#out + 1] = score
      out[#out + 1] = verdict
      out[#out + 1] = redis.call('GET', KEYS[k + 3])
      out[#out + 1] = tries
    end
  end
end
return out
"""
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
