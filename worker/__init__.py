"""The streaming-rag worker: arq jobs that publish a `StreamingRAG`'s events to Redis Streams.

Run it with ``streaming-rag worker --app module:factory`` or ``arq worker.WorkerSettings``
(configured from the environment: ``REDIS_URL``, ``STREAMING_RAG_APP``,
``STREAMING_RAG_PREFIX``, ``STREAMING_RAG_CONCURRENCY``, ``STREAMING_RAG_RETENTION_S``).
"""

from __future__ import annotations

from typing import Any

from .config import ConfigError, WorkerConfig
from .job import JOB_FUNCTION
from .runner import build_worker, worker_kwargs

__all__ = ["JOB_FUNCTION", "ConfigError", "WorkerConfig", "WorkerSettings", "build_worker"]


def __getattr__(name: str) -> Any:
    # `arq worker.WorkerSettings` reads the environment when it imports the settings, not
    # when this package is imported (so importing `worker` never fails on a bad env).
    if name == "WorkerSettings":
        settings = type("WorkerSettings", (), worker_kwargs(WorkerConfig.from_env()))
        return settings
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
