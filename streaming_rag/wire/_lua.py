"""The pieces every script of `scripts` shares: the `ScriptCall` a builder returns, and Lua
snippets (the server's clock, ending a job, comparing entry ids). `error_event` packs a
terminal ERROR in wire format v2 (``[2, "error", {msg, stage}, latency]``: cmsgpack packs a
Lua table with keys 1..n as an array); no script reads an event's payload."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Arg", "ScriptCall"]

Arg = str | int | float | bytes


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """The KEYS and ARGV of one script call, ready for ``EVALSHA sha len(keys) *keys *args``
    (or redis-py's ``script(keys=..., args=...)``)."""

    keys: list[str]
    args: list[Arg]


#: The server's clock in ms, read (TIME) on the first call only: a script that may not need
#: the time (PUBLISH's hot path) pays for it only when it does.
_CLOCK = """
local _now
local function clock()
  if not _now then
    local t = redis.call('TIME')
    _now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return _now
end
"""

#: `now`: the server's clock in ms, read at the start of the script.
_NOW = _CLOCK + "local now = clock()\n"

_END = """
local function finish(meta, events, status, retention, fields)
  redis.call('HSET', meta, 'status', status, 'finished_ms', clock())
  if fields then redis.call('HSET', meta, unpack(fields)) end
  redis.call('PERSIST', meta)
  redis.call('PEXPIRE', meta, retention)
  redis.call('PEXPIRE', events, retention)
end
local function error_event(stage, msg, latency)
  return cmsgpack.pack({2, 'error', {msg = msg, stage = stage}, latency})
end
local function declare_lost(meta, events, retention)
  local started = tonumber(redis.call('HGET', meta, 'started_ms') or clock())
  local latency = math.floor((clock() - started) / 10 + 0.5) / 100
  redis.call('XADD', events, '*', 'e', error_event('worker', 'Worker lost', latency))
  finish(meta, events, 'failed', retention)
end
"""

_ID_LT = """
local function id_lt(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
"""
