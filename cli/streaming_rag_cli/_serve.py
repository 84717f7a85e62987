"""`streaming-rag serve`: the web app under uvicorn, ending open event streams at shutdown.

Imported by the `serve` handler only (it imports uvicorn and the web extra). uvicorn runs the
app's lifespan shutdown only after every open response has ended, so an SSE stream would hold
a SIGTERM for as long as its job runs; `Server` ends the streams first (each with the comment
`: server shutting down; reconnect with Last-Event-ID`), and `timeout_graceful_shutdown`
bounds whatever else is left.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette

from streaming_rag_client.web import SECRET_ENV, create_app, end_streams

__all__ = ["GRACEFUL_SHUTDOWN_S", "RedactTokens", "Server", "is_loopback", "run"]

#: Seconds uvicorn waits for requests other than event streams before cancelling them.
GRACEFUL_SHUTDOWN_S = 5
_TOKEN = re.compile(r"(?<=[?&]token=)[^&\s]+")
logger = logging.getLogger("streaming_rag_cli.serve")


class RedactTokens(logging.Filter):
    """Masks `token=` query values (capability tokens) in uvicorn's access log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN.sub("***", arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


class Server(uvicorn.Server):
    """uvicorn's server that ends the app's event streams as soon as it starts shutting down."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.app: Starlette | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.app is not None:
            end_streams(self.app)
        await super().shutdown(sockets)


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def run(
    host: str,
    port: int,
    log_level: str,
    secret_set: bool,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> None:
    """Serve `streaming_rag_client.web.create_app()` (configured from the environment) on
    `host`:`port` until SIGTERM or SIGINT; with `metrics_port`, its Prometheus metrics on
    ``http://metrics_host:metrics_port/metrics`` (a port of their own)."""
    server: Server
    metrics: Any = None
    if metrics_port is not None:
        from streaming_rag_client.metrics import BridgeMetrics

        metrics = BridgeMetrics()

    def factory() -> Any:
        app = create_app(metrics=metrics or False)
        server.app = app
        return app

    config = uvicorn.Config(
        factory,
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    if not is_loopback(host) and not secret_set:
        logger.warning(
            "serving on %s without %s: set it (or serve your own create_app(authorize=...)) "
            "before exposing the bridge beyond this machine",
            host,
            SECRET_ENV,
        )
    server = Server(config)
    if metrics is not None:
        assert metrics_port is not None
        bound = metrics.serve(metrics_port, metrics_host)
        logger.info("metrics on http://%s:%d/metrics", metrics_host, bound)
    try:
        server.run()
    finally:
        if metrics is not None:
            metrics.close()
