"""Loading the `StreamingRAG` a worker serves from an import path `module:factory`."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from streaming_rag import StreamingRAG
from streaming_rag.exceptions import WorkerConfigError

__all__ = ["load_app"]


def load_app(path: str | None, *, app_dir: str | None = ".") -> StreamingRAG:
    """Import `module:attr`; call it if callable (a factory); return the `StreamingRAG`.

    `app_dir` (default: the current directory, as uvicorn's ``--app-dir`` and arq do) is put
    first on `sys.path` before the import, so ``--app mymodule:build`` finds ``mymodule.py``
    in the folder the worker was started from without ``PYTHONPATH``. This is safe because
    every module this project installs is named ``streaming_rag*``: a user's own ``worker.py``
    or ``client.py`` shadows nothing of ours. None leaves `sys.path` alone.

    Raises `WorkerConfigError` with what to fix when the path is missing, malformed, not
    importable, or does not produce a `StreamingRAG`.
    """
    if not path:
        raise WorkerConfigError(
            "no app given: pass --app module:factory (or set STREAMING_RAG_APP) naming a "
            "function that returns a StreamingRAG; `streaming-rag demo` runs a bundled one"
        )
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise WorkerConfigError(f"app must look like 'module:factory', got {path!r}")
    if app_dir is not None:
        folder = os.path.abspath(app_dir)
        if folder not in sys.path:
            sys.path.insert(0, folder)
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
