"""Watchers: who follows a job now, for `status(details=True)`, the bridge's status route and
the worker's opt-in `abandon_after_s` policy.

One key per job, `JobKeys.watchers` (``{prefix}:{b<NN>.<n>}:<job_id>:watchers``, in the job's
slot): a hash whose field is a *watcher id* and whose value is ``"<expiry ms>:<count>"``:

- a subscriber with its own reads (the sync client, the async client with ``fanout=False``)
  is one watcher id of count 1, refreshed by its read loop at most every refresh period;
- the async client's fan-out writes one field per watched stream for *all* its subscribers of
  that stream (watcher id = the fan-out's random id, count = its subscribers now), so 1,000
  SSE watchers of one answer in one bridge process cost one HSET per refresh period, not 1,000.

Expiry times are the server's clock (``TIME``), so clients' clocks do not matter. A watcher
that stops cleanly deletes its field (WATCH with count 0); one that dies stops refreshing and
its field expires with its expiry time; the key itself gets a TTL of at least the watch window
at every refresh, so an unwatched job's key disappears on its own (no retention needed).
WATCHERS sums the live counts and deletes the expired fields on the way (O(fields): one per
client process or own-reads subscriber).
"""

from __future__ import annotations

from collections.abc import Iterable

from ._lua import _NOW, Arg, ScriptCall
from .keys import JobKeys

__all__ = ["WATCH", "WATCHERS", "watch_call", "watchers_call"]

#: KEYS watchers; ARGV ttl_ms, then (watcher_id, count) pairs. Each watcher id's field becomes
#: ``"<now + ttl_ms>:<count>"``, or is deleted for count 0; the key's TTL is raised to ttl_ms
#: when it is below (so it outlives its freshest field). Returns the number of pairs written.
WATCH = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > 0 then
    redis.call('HSET', KEYS[1], ARGV[i], (now + ttl) .. ':' .. ARGV[i + 1])
  else
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
  n = n + 1
end
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return n
"""
)


def watch_call(keys: JobKeys, watchers: Iterable[tuple[str, int]], *, ttl_ms: int) -> ScriptCall:
    """WATCH: `(watcher id, count)` pairs follow the job for `ttl_ms` more (count 0: stopped)."""
    args: list[Arg] = [ttl_ms]
    for watcher, count in watchers:
        args += (watcher, count)
    return ScriptCall([keys.watchers], args)


#: KEYS watchers. Returns the sum of the counts whose expiry is still ahead, deleting the
#: expired fields.
WATCHERS = (
    _NOW
    + """
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local expiry, count = string.match(fields[i + 1], '^(%d+):(%d+)$')
  if expiry and tonumber(expiry) > now then
    total = total + tonumber(count)
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
return total
"""
)


def watchers_call(keys: JobKeys) -> ScriptCall:
    """WATCHERS: how many follow the job now."""
    return ScriptCall([keys.watchers], [])
