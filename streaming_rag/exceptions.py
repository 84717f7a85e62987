"""Exceptions raised by `streaming_rag`.

Tree::

    StreamingRAGError                 root of everything this package raises on purpose
    ├── ConfigError(ValueError)       a StreamConfig or prompt template that cannot work
    ├── BackendError(TypeError)       a rag_system / llm that does not fit the protocols
    │   └── NoGeneratorError(AttributeError)
    │                                 no streaming LLM and no rag_system.generate()
    └── LLMError                      an LLM adapter (`streaming_rag.llms`) failed: an HTTP
                                      error status, a refused or dropped connection, a
                                      failing LangChain runnable; the message names the
                                      server (or runnable) and the status or reason

Failures *inside* a stream (retrieval or generation raising or timing out) are not raised:
they become an `ERROR` event, as the spec requires. Exceptions raised by the caller's own
`on_chunk` / `on_event` callbacks propagate unchanged.
"""

from __future__ import annotations

__all__ = ["BackendError", "ConfigError", "LLMError", "NoGeneratorError", "StreamingRAGError"]


class StreamingRAGError(Exception):
    """Root of the exceptions this package raises."""


class ConfigError(StreamingRAGError, ValueError):
    """A configuration value that cannot work; the message names the field and the fix."""


class BackendError(StreamingRAGError, TypeError):
    """The RAG backend or LLM does not expose what the pipeline needs."""


class NoGeneratorError(BackendError, AttributeError):
    """Strategy 3 was selected but `rag_system.generate` does not exist."""


class LLMError(StreamingRAGError):
    """An LLM adapter of `streaming_rag.llms` failed while opening or reading a stream.

    The message names the server (`base_url`) or runnable and the HTTP status or the reason,
    so a stream that ends with it shows a readable ERROR event. The foreign exception is
    chained as `__cause__`; `status_code` is the HTTP status when there was one, else None.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
