"""The pieces every script of `scripts` shares: the `ScriptCall` a builder returns, and Lua
snippets (the server's clock, ending a job, comparing entry ids)."""

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
local function declare_lost(meta, events, retention)
  local started = tonumber(redis.call('HGET', meta, 'started_ms') or now)
  local latency = math.floor((now - started) / 10 + 0.5) / 100
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
