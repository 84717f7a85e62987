"""Loading the `StreamingRAG` a worker serves from an import path `module:factory`."""

from __future__ import annotations

import importlib
from typing import Any

from streaming_rag import StreamingRAG
from streaming_rag.exceptions import WorkerConfigError

__all__ = ["load_app"]


def load_app(path: str | None) -> StreamingRAG:
    """Import `module:attr`; call it if callable (a factory); return the `StreamingRAG`.

    Raises `WorkerConfigError` with what to fix when the path is missing, malformed, not importable,
    or does not produce a `StreamingRAG`.
    """
    if not path:
        raise WorkerConfigError(
            "no app given: pass --app module:factory (or set STREAMING_RAG_APP) naming a "
            "function that returns a StreamingRAG; `streaming-rag demo` runs a bundled one"
        )
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise WorkerConfigError(f"app must look like 'module:factory', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkerConfigError(f"cannot import {module_name!r} for app {path!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise WorkerConfigError(
                f"{module_name!r} has no attribute {attr!r} (app {path!r})"
            ) from None
    rag = target() if callable(target) and not isinstance(target, StreamingRAG) else target
    if not isinstance(rag, StreamingRAG):
        raise WorkerConfigError(f"app {path!r} produced {type(rag).__name__}, not a StreamingRAG")
    return rag
