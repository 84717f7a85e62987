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
from dataclasses import dataclass

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

Arg = str | int | float | bytes


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """The KEYS and ARGV of one script call, ready for ``EVALSHA sha len(keys) *keys *args``
    (or redis-py's ``script(keys=..., args=...)``)."""

    keys: list[str]
    args: list[Arg]


_NOW = """
local _t = redis.call('TIME')
local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
"""

_END = """
local function finish(meta, events, status, retention, fields)
  redis.call('HSET', meta, 'status', status, 'finished_ms', now)
  if fields then redis.call('HSET', meta, unpack(fields)) end
  redis.call('PERSIST', meta)
  redis.call('PEXPIRE', meta, retention)
  redis.call('PEXPIRE', events, retention)
end
local function error_event(stage, msg, latency)
  return cmsgpack.pack({v = 1, t = 'error', d = {msg = msg, stage = stage}, l = latency})
end
"""

#: KEYS meta, events, arq_job, queue, wake; ARGV arq_job_id, job_bytes, score_ms,
#: start_timeout_ms, record_ttl_ms. Writes the same arq records as arq's `enqueue_job` (so
#: stock arq workers run the job too) and pushes the arq job id as a wake-up token for an idle
#: worker, all in one round trip. Returns 1, or 0 when the job id is already in use.
SUBMIT = (
    _NOW
    + """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'created_ms', now,
           'start_timeout_ms', ARGV[4], 'start_deadline_ms', now + tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('RPUSH', KEYS[5], ARGV[1])
redis.call('LTRIM', KEYS[5], -1024, -1)
redis.call('PEXPIRE', KEYS[5], 60000)
return 1
"""
)


def submit_call(
    keys: JobKeys, *, record: bytes, now_ms: int, start_timeout_ms: int, record_ttl_ms: int
) -> ScriptCall:
    """SUBMIT one job: its arq `record` (see `models.arq_job_record`) is queued at `now_ms`."""
    return ScriptCall(
        [keys.meta, keys.events, keys.arq_job, keys.queue, keys.wake],
        [keys.arq_job_id, record, now_ms, start_timeout_ms, record_ttl_ms],
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
#: retention_ms, event... Appends the events only while the job is running; refreshes the
#: lease, or (final batch) sets the final status and the retention TTL. Returns 1, or 0 when
#: the job is no longer running here (declared lost, or gone).
PUBLISH = (
    _NOW
    + _END
    + """
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return 0 end
for i = 4, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end
if ARGV[2] ~= '' then
  redis.call('DEL', KEYS[3])
  finish(KEYS[2], KEYS[1], ARGV[2], ARGV[3])
else
  redis.call('PEXPIRE', KEYS[3], ARGV[1])
end
return 1
"""
)


def publish_call(
    keys: JobKeys,
    events: Sequence[bytes],
    *,
    lease_ms: int,
    retention_ms: int,
    final_status: str = "",
) -> ScriptCall:
    """PUBLISH encoded `events` in order; `final_status` ends the job with the batch."""
    return ScriptCall(
        [keys.events, keys.meta, keys.lease], [lease_ms, final_status, retention_ms, *events]
    )


#: KEYS meta, lease; ARGV lease_ms, worker_name. Keeps the lease alive while the job runs.
#: Returns 'cancel' when a cancellation was asked, 'running', or the status it found.
HEARTBEAT = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s ~= 'running' then return s end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
if redis.call('HGET', KEYS[1], 'cancel') then return 'cancel' end
return 'running'
"""


def heartbeat_call(keys: JobKeys, *, lease_ms: int, worker: str) -> ScriptCall:
    """HEARTBEAT: renew `worker`'s lease of the job for `lease_ms`."""
    return ScriptCall([keys.meta, keys.lease], [lease_ms, worker])


#: Run by a subscriber that saw no new event for a while. KEYS meta, lease, events, queue,
#: arq_job; ARGV arq_job_id, retention_ms. Returns 'missing', 'queued', 'running', 'lost'
#: (this call appended the worker ERROR), 'withdrawn' (this call appended the queue ERROR),
#: or the final status.
CHECK = (
    _NOW
    + _END
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s == 'running' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'running' end
  local started = tonumber(redis.call('HGET', KEYS[1], 'started_ms') or now)
  local latency = math.floor((now - started) / 10 + 0.5) / 100
  redis.call('XADD', KEYS[3], '*', 'e', error_event('worker', 'Worker lost', latency))
  finish(KEYS[1], KEYS[3], 'failed', ARGV[2])
  return 'lost'
end
if s == 'queued' then
  local deadline = tonumber(redis.call('HGET', KEYS[1], 'start_deadline_ms') or now)
  if now < deadline then return 'queued' end
  local waited = tonumber(redis.call('HGET', KEYS[1], 'start_timeout_ms') or 0) / 1000
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('DEL', KEYS[5])
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
        [keys.meta, keys.lease, keys.events, keys.queue, keys.arq_job],
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
