"""Where the CLI's settings come from: defaults, the environment variables it documents, and
resolving `--redis-url` / `--prefix` against them."""

from __future__ import annotations

import argparse
import logging
import os

from streaming_rag.wire.keys import DEFAULT_PREFIX, DEFAULT_REDIS_URL

from ._logging import FORMATS
from ._logging import setup_logging as _setup

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_REDIS_URL",
    "DEMO_APP",
    "ENV_VARS",
    "FOLDER_APP",
    "LLM_APP",
    "LLM_ENV",
    "SECRET_ENV",
    "EVENTS_URL_ENV",
    "EVENTS_URL_FORMS",
    "URL_FORMS",
    "events_url",
    "prefix",
    "redis_url",
    "setup_logging",
    "LOG_FORMAT_ENV",
]

DEMO_APP = "streaming_rag_worker.demo_app:demo_app"
FOLDER_APP = "streaming_rag_worker.demo_app:folder_app"
LLM_APP = "streaming_rag_worker.llm_app:openai_app"

#: `streaming-rag worker --llm-*` flag (argparse dest) -> the variable LLM_APP reads.
LLM_ENV = {
    "llm_base_url": "STREAMING_RAG_LLM_BASE_URL",
    "llm_model": "STREAMING_RAG_LLM_MODEL",
    "llm_api_key": "STREAMING_RAG_LLM_API_KEY",
    "llm_max_tokens": "STREAMING_RAG_LLM_MAX_TOKENS",
}

#: The web app's secret for signed capability links (`streaming_rag_client.web`).
SECRET_ENV = "STREAMING_RAG_SECRET"

#: The server URL forms every subcommand accepts (`streaming_rag.wire.parse_url`).
URL_FORMS = (
    "redis://[[user]:password@]host[:port][/db], rediss://... (TLS), unix:///path/to/socket, "
    "redis+sentinel://[:password@]host[:port][,host[:port]...]/service_name[/db] "
    "(rediss+sentinel://... for TLS); the password may also be given as ?password=, "
    "the sentinels' as ?sentinel_password="
)
#: The forms of the events server's URL: the same, plus a Redis Cluster.
EVENTS_URL_FORMS = (
    "any server URL above, or a Redis Cluster: redis+cluster://[:password@]host:port"
    "[,host:port...] (seed nodes; rediss+cluster://... for TLS)"
)
#: The variable naming the events server (per-job keys) when it is not the queue server.
EVENTS_URL_ENV = "STREAMING_RAG_EVENTS_URL"

#: Every environment variable the CLI, or the worker or web app it runs, reads.
#: The variable naming the log format of `worker` and `serve` ("text" or "json").
LOG_FORMAT_ENV = "STREAMING_RAG_LOG_FORMAT"

ENV_VARS = {
    LOG_FORMAT_ENV: "worker, serve: log lines as text (default) or json",
    "REDIS_URL": f"server URL for every subcommand (default {DEFAULT_REDIS_URL}): {URL_FORMS}",
    EVENTS_URL_ENV: "where the per-job keys (event streams, job hashes, leases) live, when not "
    f"on the REDIS_URL server (default: that server): {EVENTS_URL_FORMS}",
    "STREAMING_RAG_PREFIX": f"key prefix / queue name (default {DEFAULT_PREFIX})",
    "STREAMING_RAG_APP": "worker: the pipeline factory, module:factory",
    "STREAMING_RAG_CONCURRENCY": "worker: jobs run at once (arq max_jobs, default 100)",
    "STREAMING_RAG_RETENTION_S": "worker: seconds a finished job's keys live (default 3600)",
    "STREAMING_RAG_METRICS_PORT": "worker: serve Prometheus metrics on this port of 127.0.0.1 "
    "(GET /metrics; needs the metrics extra; default: no metrics)",
    "STREAMING_RAG_FLUSH_MS": "worker: the publisher's coalescing window in ms (default 0: off)",
    "STREAMING_RAG_ABANDON_AFTER_S": "worker: cancel a running job nobody has watched for this "
    "many seconds (default: never)",
    "STREAMING_RAG_DOCS": f"folder of .md/.txt files served by {FOLDER_APP} or {LLM_APP}",
    "STREAMING_RAG_LLM_BASE_URL": f"{LLM_APP}: OpenAI-compatible API base URL",
    "STREAMING_RAG_LLM_MODEL": f"{LLM_APP}: model name",
    "STREAMING_RAG_LLM_API_KEY": f"{LLM_APP}: API key",
    "STREAMING_RAG_LLM_MAX_TOKENS": f"{LLM_APP}: max tokens per answer",
    SECRET_ENV: "serve: secret (16+ bytes) signing the per-job links POST /answers returns; "
    "watching and cancelling then need them (unset: anyone reaching the server may)",
}


def setup_logging(verbose: bool, level: int = logging.WARNING, fmt: str | None = None) -> None:
    """Log to stderr: `fmt` "text" or "json" (default: `$STREAMING_RAG_LOG_FORMAT`, else text)."""
    chosen = fmt or os.environ.get(LOG_FORMAT_ENV) or "text"
    _setup(verbose, level, chosen if chosen in FORMATS else "text")


def redis_url(args: argparse.Namespace) -> str:
    """`--redis-url`, else `$REDIS_URL`, else the default."""
    return str(args.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)


def events_url(args: argparse.Namespace) -> str | None:
    """`--events-url`, else `$STREAMING_RAG_EVENTS_URL`, else None (the queue server)."""
    value = getattr(args, "events_url", None) or os.environ.get(EVENTS_URL_ENV)
    return str(value) if value else None


def prefix(args: argparse.Namespace) -> str:
    """`--prefix`, else `$STREAMING_RAG_PREFIX`, else the default."""
    return str(args.prefix or os.environ.get("STREAMING_RAG_PREFIX") or DEFAULT_PREFIX)
