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
script declares every key it touches in KEYS, so a Redis Cluster can route it, and no script
touches both a job's keys and the queue server's unless one server holds both: the queue-side
halves (ENQUEUE, CLAIM, DEQUEUE) live in `queue_scripts`, and SUBMIT, CHECK and CANCEL take
the queue keys only when the caller passes `with_queue=True` (one server).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._lua import _CLOCK, _END, _ID_LT, _NOW, Arg, ScriptCall
from .keys import JobKeys
from .queue_scripts import (
    CLAIM,
    CLAIM_KEYS_PER_JOB,
    DEQUEUE,
    ENQUEUE,
    ENQUEUE_FN,
    TAKE,
    claim_call,
    dequeue_call,
    enqueue_call,
    take_call,
)

__all__ = [
    "CANCEL",
    "CHECK",
    "CLAIM",
    "CLAIM_KEYS_PER_JOB",
    "DEQUEUE",
    "ENQUEUE",
    "HEARTBEAT",
    "PUBLISH",
    "START",
    "SUBMIT",
    "TAKE",
    "ScriptCall",
    "cancel_call",
    "check_call",
    "claim_call",
    "dequeue_call",
    "enqueue_call",
    "heartbeat_call",
    "publish_call",
    "start_call",
    "submit_call",
    "take_call",
]

#: KEYS meta, events[, arq_job, queue, wake, index]; ARGV arq_job_id, job_bytes, score_ms,
#: start_timeout_ms, record_ttl_ms, nonce, job_id. Creates the job hash (queued, with its start
#: deadline). Given the four queue keys too (one server holds both), it also enqueues the job
#: as ENQUEUE does, in the same atomic call; else (`with_queue=False`: the events live on
#: another server) the caller runs ENQUEUE on the queue server next, only when this returned
#: 1. Idempotent: a retry after a lost reply finds its own `nonce` and returns 1 again.
#: Returns 1, or 0 when another submit uses the job id.
SUBMIT = (
    _NOW
    + ENQUEUE_FN
    + """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('HGET', KEYS[1], 'nonce') == ARGV[6] then return 1 end
  return 0
end
local deadline = now + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'queued', 'created_ms', now, 'nonce', ARGV[6],
           'start_timeout_ms', ARGV[4], 'start_deadline_ms', deadline)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if #KEYS > 2 then
  -- the wake-up token names the job's keys too, so TAKE can START it in the same call
  local token = ARGV[1] .. '\t' .. string.sub(KEYS[1], 1, -5)
  enqueue(KEYS[3], KEYS[4], KEYS[5], KEYS[6], deadline, token)
end
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
    with_queue: bool = True,
) -> ScriptCall:
    """SUBMIT one job: its arq `record` (see `models.arq_job_record`) is queued at `now_ms`;
    `nonce` (unique per submit) makes a retried SUBMIT answer 1 instead of a duplicate.
    `with_queue=False` declares the job's keys only (then `enqueue_call` follows)."""
    queue = [keys.arq_job, keys.queue, keys.wake, keys.index] if with_queue else []
    return ScriptCall(
        [keys.meta, keys.events, *queue],
        [keys.arq_job_id, record, now_ms, start_timeout_ms, record_ttl_ms, nonce, keys.job_id],
    )


#: KEYS meta, lease; ARGV lease_ms, worker_name. Returns 'ok' when the job moved from queued
#: to running (the worker owns it now), else its status ('missing' if no job hash). A retry by
#: the same worker after a lost reply finds the job running under its own name and its lease
#: alive, and answers 'ok' again (so a worker can retry START through an outage).
START = (
    _NOW
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s == 'running' and redis.call('HGET', KEYS[1], 'worker') == ARGV[2]
   and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1])
  return 'ok'
end
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
#: after it with the original ids. Appends only while the job's lease is alive: a lease exists
#: only while its job is `running` (START, CLAIM and HEARTBEAT set it on running jobs; every end
#: deletes it or finds it expired), so the hot path reads no status and no clock: three
#: commands per call (XREVRANGE, EXISTS, XADD per entry). The heartbeat owns the lease's
#: renewal. A lease that expired (e.g. an outage longer than the lease) ends the job here as
#: "Worker lost": a worker never resurrects a job that others may have given up on. A final
#: batch sets the final status and the retention TTL and deletes the lease.
#: Returns 1 (written, or a final batch found already written), the stream's top id (a gap),
#: or 0 when the job is no longer running here (declared lost, or gone).
PUBLISH = (
    _CLOCK
    + _END
    + _ID_LT
    + """
local function not_running()
  if redis.call('HGET', KEYS[2], 'status') == 'running' then
    declare_lost(KEYS[2], KEYS[1], ARGV[3])
    return 0
  end
  local final_id = ARGV[#ARGV - 1]
  if ARGV[2] ~= '' and #redis.call('XRANGE', KEYS[1], final_id, final_id) == 1 then return 1 end
  return 0
end
local top = '0-0'
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then top = last[1][1] end
if id_lt(top, ARGV[4]) then
  if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return not_running() end
  redis.call('SET', KEYS[3], 'resync', 'PX', ARGV[1])
  return top
end
if redis.call('EXISTS', KEYS[3]) == 0 then return not_running() end
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
#: meta, lease, events[, queue, arq_job, arq_in_progress, arq_retry]; ARGV arq_job_id,
#: retention_ms. A job it ends (lost or withdrawn) also leaves arq's queue and records when the
#: four queue keys are given (one server holds both); else (`with_queue=False`) the caller
#: runs DEQUEUE on the queue server after a 'lost' or 'withdrawn' (best effort: a leftover
#: queue entry finds the job ended at its CLAIM and is dropped there).
#: Returns 'missing', 'queued', 'running', 'lost' (this call appended the worker ERROR),
#: 'withdrawn' (this call appended the queue ERROR), or the final status.
CHECK = (
    _NOW
    + _END
    + """
local function dequeue()
  if #KEYS > 3 then
    redis.call('ZREM', KEYS[4], ARGV[1])
    redis.call('DEL', KEYS[5], KEYS[6], KEYS[7])
  end
end
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s == 'running' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'running' end
  declare_lost(KEYS[1], KEYS[3], ARGV[2])
  dequeue()
  return 'lost'
end
if s == 'queued' then
  local deadline = tonumber(redis.call('HGET', KEYS[1], 'start_deadline_ms') or now)
  if now < deadline then return 'queued' end
  local waited = tonumber(redis.call('HGET', KEYS[1], 'start_timeout_ms') or 0) / 1000
  dequeue()
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


def check_call(keys: JobKeys, *, retention_ms: int, with_queue: bool = True) -> ScriptCall:
    """CHECK the job's liveness; a job it ends keeps its keys for `retention_ms`.
    `with_queue=False` declares the job's keys only (then `dequeue_call` follows an end)."""
    queue = [keys.queue, keys.arq_job, keys.arq_in_progress, keys.arq_retry] if with_queue else []
    return ScriptCall([keys.meta, keys.lease, keys.events, *queue], [keys.arq_job_id, retention_ms])


#: KEYS meta, events[, queue, arq_job]; ARGV arq_job_id, retention_ms, cancel_channel, job_id.
#: A queued job is withdrawn and ends at once; a running one is flagged and, when the queue
#: keys are given (one server holds both), its worker told over pub/sub. With
#: `with_queue=False` the caller does the queue side next: DEQUEUE after 'withdrawn', PUBLISH
#: on the queue server's cancel channel after 'requested' (the worker's heartbeat sees the
#: flag within a heartbeat even if that PUBLISH is lost). Returns 'withdrawn' (queued job ended
#: now), 'requested' (running job flagged), 'missing', or the final status of a job that had
#: already ended.
CANCEL = (
    _NOW
    + _END
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s == 'queued' then
  if #KEYS > 2 then
    redis.call('ZREM', KEYS[3], ARGV[1])
    redis.call('DEL', KEYS[4])
  end
  redis.call('XADD', KEYS[2], '*', 'e', error_event('generation', 'Cancelled', 0))
  finish(KEYS[1], KEYS[2], 'cancelled', ARGV[2])
  return 'withdrawn'
end
if s == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  if #KEYS > 2 then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
  return 'requested'
end
return s
"""
)


def cancel_call(keys: JobKeys, *, retention_ms: int, with_queue: bool = True) -> ScriptCall:
    """CANCEL the job; a job it ends keeps its keys for `retention_ms`. `with_queue=False`
    declares the job's keys only (see CANCEL for what the caller does next)."""
    queue = [keys.queue, keys.arq_job] if with_queue else []
    return ScriptCall(
        [keys.meta, keys.events, *queue],
        [keys.arq_job_id, retention_ms, keys.cancel_channel, keys.job_id],
    )
