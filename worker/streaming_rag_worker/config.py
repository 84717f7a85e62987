"""`WorkerConfig`: every setting of a worker, validated loudly, from arguments or env."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from arq.connections import RedisSettings

from streaming_rag.exceptions import InvalidRequest, WorkerConfigError
from streaming_rag.wire import DEFAULT_PREFIX, ServerSpec, parse_url, redact_url, validate_prefix
from streaming_rag.wire.keys import DEFAULT_REDIS_URL

from .metrics import require_prometheus

__all__ = ["DEFAULT_REDIS_URL", "WorkerConfig"]


def _default_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """Settings of one worker process. Durations are seconds, named with `_s`.

    `app` is the import path `module:factory` of a zero-argument callable returning a
    `StreamingRAG` (built once per process at startup). `concurrency` is arq's `max_jobs`.
    `lease_s` is the liveness lease TTL, refreshed every `heartbeat_s` by the heartbeat.
    `retention_s` is how long a finished job's keys live. `max_events` caps one job's stream.
    `shutdown_grace_s` is how long running jobs may finish after SIGTERM before they end with
    an ERROR. `job_timeout_s` is arq's hard limit on one job. `startup_wait_s` is how long a
    starting worker waits for an unreachable Redis before it gives up; once running, a worker
    rides through outages of any length (see docs/operations.md). `heartbeat_s` is also the
    period of the sweep that ends jobs nobody watches (`sweeper`).

    Two places: `redis_url` is the queue server (arq's keys, the wake list, the sweep index,
    the cancel channel: standalone or Sentinel, never a cluster, as arq cannot run on one);
    `events_url` is where every per-job key lives (event streams, job hashes, leases:
    standalone, Sentinel, or a Redis Cluster, ``redis+cluster://``). `events_url` defaults to
    `redis_url`: one server holds both, and every state change stays one atomic script.

    `metrics_port` serves Prometheus metrics on ``http://metrics_host:metrics_port/metrics``
    (extra `metrics`; `metrics_host` defaults to 127.0.0.1, this machine only; port 0 binds any
    free port). None (the default): no metrics. See `streaming_rag_worker.metrics`.

    `abandon_after_s` (opt-in; None, the default: never) cancels a running job nobody has
    watched for that many seconds (counted from its start), ending it with ERROR {"stage":
    "generation", "msg": "Abandoned: nobody watching"}; see `streaming_rag_worker.abandon`.

    `flush_ms` (default 0: off) is the publisher's coalescing window: events wait up to that
    long to travel together, trading up to `flush_ms` of latency for fewer script calls (the
    events server's CPU per token) when an LLM paces tokens a few ms apart.
    """

    redis_url: str = DEFAULT_REDIS_URL
    events_url: str | None = None
    prefix: str = DEFAULT_PREFIX
    app: str | None = None
    concurrency: int = 100
    retention_s: float = 3600.0
    lease_s: float = 3.0
    heartbeat_s: float = 1.0
    max_events: int = 100_000
    shutdown_grace_s: float = 10.0
    job_timeout_s: float = 3600.0
    startup_wait_s: float = 30.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    abandon_after_s: float | None = None
    flush_ms: float = 0.0
    name: str = field(default_factory=_default_name)

    def __post_init__(self) -> None:
        try:
            validate_prefix(self.prefix)
        except ValueError as exc:
            raise WorkerConfigError(str(exc)) from None
        _arq_settings(self._server())  # a URL arq cannot serve fails here, not at startup
        self.events_server()
        if self.concurrency < 1:
            raise WorkerConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_events < 2:
            raise WorkerConfigError(f"max_events must be >= 2, got {self.max_events}")
        for name in ("retention_s", "lease_s", "heartbeat_s", "job_timeout_s", "startup_wait_s"):
            if not getattr(self, name) > 0:
                raise WorkerConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.metrics_port is not None:
            if isinstance(self.metrics_port, bool) or not 0 <= self.metrics_port <= 65535:
                raise WorkerConfigError(
                    f"metrics_port must be a port number 0-65535, got {self.metrics_port!r}"
                )
            require_prometheus()
        if self.abandon_after_s is not None and not self.abandon_after_s > 0:
            raise WorkerConfigError(
                f"abandon_after_s must be > 0 (or None: never), got {self.abandon_after_s}"
            )
        if not 0 <= self.flush_ms <= 1000:
            raise WorkerConfigError(f"flush_ms must be 0-1000 ms, got {self.flush_ms}")
        if self.shutdown_grace_s < 0:
            raise WorkerConfigError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")
        if self.heartbeat_s * 2 > self.lease_s:
            raise WorkerConfigError(
                f"heartbeat_s ({self.heartbeat_s}) must be at most half of lease_s "
                f"({self.lease_s}) so the lease is refreshed well before it expires"
            )

    def __repr__(self) -> str:
        """Every field, with the passwords of `redis_url` masked."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.repr}
        shown["redis_url"] = redact_url(self.redis_url)
        if self.events_url is not None:
            shown["events_url"] = redact_url(self.events_url)
        return f"WorkerConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def _server(self) -> ServerSpec:
        try:
            spec = parse_url(self.redis_url)
        except InvalidRequest as exc:  # its message names the URL with the passwords masked
            raise WorkerConfigError(f"redis_url: {exc}") from None
        if spec.kind == "cluster":
            raise WorkerConfigError(
                f"redis_url {str(spec)!r} is a cluster: the queue cannot live on a Redis "
                "Cluster (arq cannot run on one). Give the cluster as events_url "
                "(--events-url / STREAMING_RAG_EVENTS_URL) and a standalone or Sentinel "
                "server as redis_url"
            )
        return spec

    def events_server(self) -> ServerSpec | None:
        """The events server's `ServerSpec`, or None when it is the queue server (no
        `events_url`, or the same URL)."""
        if self.events_url is None or self.events_url == self.redis_url:
            return None
        try:
            return parse_url(self.events_url)
        except InvalidRequest as exc:
            raise WorkerConfigError(f"events_url: {exc}") from None

    def redis_settings(self) -> RedisSettings:
        """arq's `RedisSettings` for `redis_url` (every form `streaming_rag.wire.parse_url`
        accepts), whose `repr()` masks the password.

        Standalone: host, port, database, username, password, ssl, or `unix_socket_path`.
        Sentinel: ``sentinel=True``, `sentinel_master` (the service name), `host` (the list of
        sentinel (host, port) pairs), database, username, password and ssl, which arq's
        `create_pool` hands to redis-py's `Sentinel(...).master_for(...)`: the worker's pool
        then asks the sentinels for the primary at every new connection and follows it
        through a failover (a READONLY reply from a demoted primary becomes a
        `ConnectionError`, and the next connection goes to the new primary). arq's
        `create_pool` passes the sentinels nothing but their addresses (no password, no TLS,
        no timeouts), so a URL with ``?sentinel_password=`` raises `WorkerConfigError` (also
        from the constructor) rather than being dropped silently.
        """
        return _arq_settings(self._server())

    @property
    def lease_ms(self) -> int:
        return int(self.lease_s * 1000)

    @property
    def retention_ms(self) -> int:
        return int(self.retention_s * 1000)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> WorkerConfig:
        """Read `REDIS_URL`, `STREAMING_RAG_EVENTS_URL`, `STREAMING_RAG_APP`,
        `STREAMING_RAG_PREFIX`, `STREAMING_RAG_CONCURRENCY`, `STREAMING_RAG_RETENTION_S`,
        `STREAMING_RAG_METRICS_PORT`, `STREAMING_RAG_ABANDON_AFTER_S`;
        `overrides` win (None values are ignored)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        names = {
            "REDIS_URL": ("redis_url", str),
            "STREAMING_RAG_EVENTS_URL": ("events_url", str),
            "STREAMING_RAG_APP": ("app", str),
            "STREAMING_RAG_PREFIX": ("prefix", str),
            "STREAMING_RAG_CONCURRENCY": ("concurrency", int),
            "STREAMING_RAG_RETENTION_S": ("retention_s", float),
            "STREAMING_RAG_METRICS_PORT": ("metrics_port", int),
            "STREAMING_RAG_ABANDON_AFTER_S": ("abandon_after_s", float),
            "STREAMING_RAG_FLUSH_MS": ("flush_ms", float),
        }
        for var, (attr, conv) in names.items():
            raw = env.get(var)
            if raw:
                try:
                    values[attr] = conv(raw)
                except ValueError:
                    raise WorkerConfigError(
                        f"{var}={raw!r} is not a valid {conv.__name__}"
                    ) from None
        known = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise WorkerConfigError(f"unknown worker setting {key!r}")
            if value is not None:
                values[key] = value
        return cls(**values)  # type: ignore[arg-type]


class _MaskedRedisSettings(RedisSettings):
    """arq's `RedisSettings`, whose `repr()` (arq's prints every field) masks the password."""

    def __repr__(self) -> str:
        shown = {**self.__dict__, "password": None if self.password is None else "***"}
        return "RedisSettings({})".format(", ".join(f"{k}={v!r}" for k, v in shown.items()))


def _arq_settings(spec: ServerSpec) -> RedisSettings:
    """`spec` as arq's settings; `WorkerConfigError` for what arq cannot pass on."""
    common: dict[str, Any] = {
        "database": spec.db,
        "username": spec.username,
        "password": spec.password,
        "ssl": spec.tls,
    }
    if spec.kind == "sentinel":
        if spec.sentinel_password is not None:
            raise WorkerConfigError(
                f"redis_url {str(spec)!r}: the worker cannot log in to password-protected "
                "sentinels (arq's create_pool passes them no password); drop "
                "?sentinel_password= and run the sentinels without requirepass"
            )
        return _MaskedRedisSettings(
            host=list(spec.sentinels),
            sentinel=True,
            sentinel_master=spec.service_name or "",
            **common,
        )
    if spec.path is not None:
        return _MaskedRedisSettings(unix_socket_path=spec.path, **common)
    return _MaskedRedisSettings(host=spec.host or "", port=spec.port or 0, **common)
