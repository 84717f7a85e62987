"""The streaming-rag worker: arq jobs that publish a `StreamingRAG`'s events to Redis Streams.

Run it with ``streaming-rag worker --app module:factory`` or
``arq streaming_rag_worker.WorkerSettings`` (configured from the environment: ``REDIS_URL``,
``STREAMING_RAG_APP``, ``STREAMING_RAG_PREFIX``, ``STREAMING_RAG_CONCURRENCY``,
``STREAMING_RAG_RETENTION_S``).
"""

from __future__ import annotations

from typing import Any

from streaming_rag.exceptions import WorkerConfigError

from .config import WorkerConfig
from .job import JOB_FUNCTION
from .runner import build_worker, worker_kwargs

__all__ = ["JOB_FUNCTION", "WorkerConfigError", "WorkerConfig", "WorkerSettings", "build_worker"]


def __getattr__(name: str) -> Any:
    # `arq streaming_rag_worker.WorkerSettings` reads the environment when it imports the
    # settings, not when this package is imported (so importing it never fails on a bad env).
    if name == "WorkerSettings":
        settings = type("WorkerSettings", (), worker_kwargs(WorkerConfig.from_env()))
        return settings
    raise AttributeError(f"module 'streaming_rag_worker' has no attribute {name!r}")
