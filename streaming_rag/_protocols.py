"""The two LLM protocols that select generation strategies 1 and 2."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Protocol, runtime_checkable

__all__ = ["AsyncStreamableLLM", "SyncStreamableLLM"]


@runtime_checkable
class SyncStreamableLLM(Protocol):
    """An LLM whose `stream(prompt)` yields text tokens synchronously (strategy 2)."""

    def stream(self, prompt: str) -> Iterator[str]: ...


@runtime_checkable
class AsyncStreamableLLM(Protocol):
    """An LLM whose `astream(prompt)` yields text tokens asynchronously (strategy 1).

    `astream` may be an async generator function, or a coroutine function returning an
    async iterator; both are accepted.
    """

    def astream(self, prompt: str) -> AsyncIterator[str]: ...
