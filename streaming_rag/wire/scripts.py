"""Lua scripts: every state change of a job is one atomic script, so a client, a worker and any
number of subscribers can race without a job ever getting two terminal events.

Job states (the ``status`` field of the job hash)::

    queued ──START──▶ running ──PUBLISH(terminal)──▶ done | failed | cancelled
      │                  │
      │                  └──CHECK (lease gone)──▶ failed  + ERROR {"stage": "worker"}
      ├──CHECK (start deadline passed)──▶ failed  + ERROR {"stage": "queue"}
      └──CANCEL──▶ cancelled + ERROR {"stage": "generation", "msg": "Cancelled"}

Only a script that moves a job out of ``running``/``queued`` appends its terminal event, and
the worker's PUBLISH appends nothing once the job left ``running``. Times come from the
server's clock (``TIME``) except arq's queue score, which arq compares with the worker's.
Events written here are packed with Lua's ``cmsgpack`` in the wire format.

One contract per script: each Lua source stands beside the typed function that builds its
KEYS and ARGV from a `JobKeys` (`submit_call`, `start_call`, ...), and every caller (the
client's twins, the worker, its publisher and its claim) goes through that function. Every
script declares every key it touches in KEYS, so a Redis Cluster can route it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._lua import _END, _ID_LT, _NOW, Arg, ScriptCall
from .keys import (
    ARQ_IN_PROGRESS_KEY_PREFIX,
    ARQ_JOB_KEY_PREFIX,
    ARQ_RETRY_KEY_PREFIX,
    JobKeys,
)

__all__ = [
    "CANCEL",
    "CHECK",
    "CLAIM",
    "CLAIM_KEYS_PER_JOB",
    "HEARTBEAT",
    "PUBLISH",
    "START",
    "SUBMIT",
    "ScriptCall",
    "cancel_call",
    "check_call",
    "claim_call",
    "heartbeat_call",
    "publish_call",
    "start_call",
    "submit_call",
]

#: KEYS meta, events, arq_job, queue, wake, index; ARGV arq_job_id, job_bytes, score_ms,
#: start_timeout_ms, record_ttl_ms, nonce, job_id. Writes the same arq records as arq's
#: `enqueue_job` (so stock arq workers run the job too), pushes the arq job id as a wake-up
#: token for an idle worker, and indexes the job for the workers' sweep (due at its start
#: deadline), all in one round trip. Idempotent: a retry after a lost reply finds its own
#: `nonce` and returns 1 again. Returns 1, or 0 when another submit uses the job id.
SUBMIT = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('HGET', KEYS[1], 'nonce') == ARGV[6] then return 1 end
  return 0
end
local deadline = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'queued', 'created_ms', now, 'nonce', ARGV[6],
           'start_timeout_ms', ARGV[4], 'start_deadline_ms', deadline)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('RPUSH', KEYS[5], ARGV[1])
redis.call('LTRIM', KEYS[5], -1024, -1)
redis.call('PEXPIRE', KEYS[5], 60000)
redis.call('ZADD', KEYS[6], deadline, ARGV[7])
return 1
"""
)


def submit_call(
    keys: JobKeys,
    *,
    record: bytes,
    now_ms: int,
    start_timeout_ms: int,
    record_ttl_ms: int,
    nonce: str,
) -> ScriptCall:
    """SUBMIT one job: its arq `record` (see `models.arq_job_record`) is queued at `now_ms`;
    `nonce` (unique per submit) makes a retried SUBMIT answer 1 instead of a duplicate."""
    return ScriptCall(
        [keys.meta, keys.events, keys.arq_job, keys.queue, keys.wake, keys.index],
        [keys.arq_job_id, record, now_ms, start_timeout_ms, record_ttl_ms, nonce, keys.job_id],
    )


#: KEYS meta, lease; ARGV lease_ms, worker_name. Returns 'ok' when the job moved from queued
#: to running (the worker owns it now), else its status ('missing' if no job hash).
START = (
    _NOW
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s ~= 'queued' then return s end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_ms', now, 'worker', ARGV[2])
redis.call('PERSIST', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
return 'ok'
"""
)


def start_call(keys: JobKeys, *, lease_ms: int, worker: str) -> ScriptCall:
    """START the job on `worker`, taking a lease of `lease_ms`."""
    return ScriptCall([keys.meta, keys.lease], [lease_ms, worker])


#: KEYS events, meta, lease; ARGV lease_ms, final_status ('' unless the batch ends the job),
#: retention_ms, expected_top, then (entry_id, event) pairs. The worker decides every entry id
#: (`EntryIds`), so the script is idempotent: an entry at or below the stream's top is already
#: there and is skipped, so a retried batch never duplicates. `expected_top` is the id of the
#: last entry the worker knows it wrote before this batch ('0-0' for none): a stream whose top
#: is below it lost its tail (a failover promoted a replica that missed writes), and the script
#: writes nothing but the lease (the lost writes held the worker's lease refreshes too: it
#: takes the lease again) and returns that top as a string, so the worker re-sends everything
#: after it with the original ids. Appends only while the job is running and its lease is alive (a
#: lease that expired, e.g. during an outage longer than the lease, ends the job here as
#: "Worker lost": a worker never resurrects a job that others may have given up on);
#: refreshes the lease, or (final batch) sets the final status and the retention TTL.
#: Returns 1 (written, or a final batch found already written), the stream's top id (a gap),
#: or 0 when the job is no longer running here (declared lost, or gone).
PUBLISH = (
    _NOW
    + _END
    + _ID_LT
    + """
local top = '0-0'
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then top = last[1][1] end
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then
  local final_id = ARGV[#ARGV - 1]
  if ARGV[2] ~= '' and #redis.call('XRANGE', KEYS[1], final_id, final_id) == 1 then return 1 end
  return 0
end
if id_lt(top, ARGV[4]) then
  redis.call('SET', KEYS[3], 'resync', 'PX', ARGV[1])
  return top
end
if redis.call('PEXPIRE', KEYS[3], ARGV[1]) == 0 then
  declare_lost(KEYS[2], KEYS[1], ARGV[3])
  return 0
end
for i = 5, #ARGV, 2 do
  if id_lt(top, ARGV[i]) then redis.call('XADD', KEYS[1], ARGV[i], 'e', ARGV[i + 1]) end
end
if ARGV[2] ~= '' then
  redis.call('DEL', KEYS[3])
  finish(KEYS[2], KEYS[1], ARGV[2], ARGV[3])
end
return 1
"""
)


def publish_call(
    keys: JobKeys,
    entries: Sequence[tuple[str, bytes]],
    *,
    expected_top: str,
    lease_ms: int,
    retention_ms: int,
    final_status: str = "",
) -> ScriptCall:
    """PUBLISH `(entry_id, encoded event)` pairs in id order, after `expected_top`;
    `final_status` ends the job with the batch."""
    args: list[Arg] = [lease_ms, final_status, retention_ms, expected_top]
    for entry_id, payload in entries:
        args += (entry_id, payload)
    return ScriptCall([keys.events, keys.meta, keys.lease], args)


#: KEYS meta, lease, events; ARGV lease_ms, worker_name, retention_ms. Keeps the lease alive
#: while the job runs. Returns 'cancel' when a cancellation was asked, 'running', 'lost' (the
#: lease had expired: this call ended the job), or the status it found.
HEARTBEAT = (
    _NOW
    + _END
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s ~= 'running' then return s end
if not redis.call('SET', KEYS[2], ARGV[2], 'XX', 'PX', ARGV[1]) then
  declare_lost(KEYS[1], KEYS[3], ARGV[3])
  return 'lost'
end
if redis.call('HGET', KEYS[1], 'cancel') then return 'cancel' end
return 'running'
"""
)


def heartbeat_call(keys: JobKeys, *, lease_ms: int, worker: str, retention_ms: int) -> ScriptCall:
    """HEARTBEAT: renew `worker`'s lease of the job for `lease_ms`; a lease that already
    expired (an outage longer than the lease) ends the job as "Worker lost" instead."""
    return ScriptCall([keys.meta, keys.lease, keys.events], [lease_ms, worker, retention_ms])


#: Run by a subscriber that saw no new event for a while, and by the workers' sweep. KEYS
#: meta, lease, events, queue, arq_job, arq_in_progress, arq_retry; ARGV arq_job_id,
#: retention_ms. A job it ends (lost or withdrawn) also leaves arq's queue and records.
#: Returns 'missing', 'queued', 'running', 'lost' (this call appended the worker ERROR),
#: 'withdrawn' (this call appended the queue ERROR), or the final status.
CHECK = (
    _NOW
    + _END
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s == 'running' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'running' end
  declare_lost(KEYS[1], KEYS[3], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('DEL', KEYS[5], KEYS[6], KEYS[7])
  return 'lost'
end
if s == 'queued' then
  local deadline = tonumber(redis.call('HGET', KEYS[1], 'start_deadline_ms') or now)
  if now < deadline then return 'queued' end
  local waited = tonumber(redis.call('HGET', KEYS[1], 'start_timeout_ms') or 0) / 1000
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('DEL', KEYS[5], KEYS[6], KEYS[7])
  local msg = string.format('No worker picked up the job within %g s: is a worker running? '
    .. 'Start one with `streaming-rag worker --app module:factory` '
    .. '(same Redis URL and prefix), or run `streaming-rag demo`.', waited)
  redis.call('XADD', KEYS[3], '*', 'e', error_event('queue', msg, 0))
  finish(KEYS[1], KEYS[3], 'failed', ARGV[2])
  return 'withdrawn'
end
return s
"""
)


def check_call(keys: JobKeys, *, retention_ms: int) -> ScriptCall:
    """CHECK the job's liveness; a job it ends keeps its keys for `retention_ms`."""
    return ScriptCall(
        [
            keys.meta,
            keys.lease,
            keys.events,
            keys.queue,
            keys.arq_job,
            keys.arq_in_progress,
            keys.arq_retry,
        ],
        [keys.arq_job_id, retention_ms],
    )


#: KEYS meta, events, queue, arq_job; ARGV arq_job_id, retention_ms, cancel_channel, job_id.
#: A queued job is withdrawn and ends at once; a running one is flagged and its worker told
#: over pub/sub. Returns 'withdrawn' (queued job ended now), 'requested' (running job
#: flagged), 'missing', or the final status of a job that had already ended.
CANCEL = (
    _NOW
    + _END
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s == 'queued' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[4])
  redis.call('XADD', KEYS[2], '*', 'e', error_event('generation', 'Cancelled', 0))
  finish(KEYS[1], KEYS[2], 'cancelled', ARGV[2])
  return 'withdrawn'
end
if s == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  return 'requested'
end
return s
"""
)


def cancel_call(keys: JobKeys, *, retention_ms: int) -> ScriptCall:
    """CANCEL the job; a job it ends keeps its keys for `retention_ms`."""
    return ScriptCall(
        [keys.meta, keys.events, keys.queue, keys.arq_job],
        [keys.arq_job_id, retention_ms, keys.cancel_channel, keys.job_id],
    )


#: Worker: claim arq jobs and start them, in one round trip (arq's `start_jobs` spends four
#: per job: WATCH, EXISTS, ZSCORE, MULTI/EXEC; then the job's START would be a fifth).
#: KEYS queue, then per job `CLAIM_KEYS_PER_JOB` keys: arq in-progress, arq retry, arq record,
#: meta, lease; ARGV in_progress_ttl_ms, now_ms, lease_ms, worker_name, then one arq job id
#: per job. A job is claimed when it is still queued in arq, due, and not in progress
#: elsewhere; its arq in-progress key is set exactly as arq sets it. Then START runs for it.
#: It also does what arq's `run_job` does first (INCR the try counter, GET the record), so the
#: job can run at once. Returns a flat list: arq_job_id, score, start verdict ('ok' or the
#: status found; 'missing' for an arq job that is not one of ours), arq record (or false),
#: try count, ...
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
      local verdict = 'missing'
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
) -> ScriptCall:
    """CLAIM and START the arq jobs `arq_job_ids` of `queue` for `worker`. An arq job that is
    not one of `prefix`'s (another function on the same queue) is claimed for arq alone: its
    meta and lease keys are declared as empty names, which the script never touches."""
    keys: list[str] = [queue]
    for arq_id in arq_job_ids:
        job = JobKeys.from_arq_job_id(prefix, arq_id)
        keys += [
            ARQ_IN_PROGRESS_KEY_PREFIX + arq_id,
            ARQ_RETRY_KEY_PREFIX + arq_id,
            ARQ_JOB_KEY_PREFIX + arq_id,
            "" if job is None else job.meta,
            "" if job is None else job.lease,
        ]
    return ScriptCall(keys, [in_progress_ttl_ms, now_ms, lease_ms, worker, *arq_job_ids])
