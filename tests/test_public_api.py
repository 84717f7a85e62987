"""§1 module overview: exactly the public names, typed package."""

from __future__ import annotations

import importlib.resources
import tomllib
from pathlib import Path

import streaming_rag

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
        "bad = [m for m in ('redis', 'arq', 'worker', 'client') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
