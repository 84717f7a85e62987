"""streaming_rag: stream RAG answers token by token as typed events.

Wrap any RAG backend (`.retrieve()`, optional `.generate()`) and an optional streaming LLM in
a `StreamingRAG`, then consume `stream`, `stream_events`, `query`, `astream` or
`astream_events`. This package is pure asyncio: it imports no Redis and knows no queue.
"""

from ._config import StreamConfig
from ._events import EventType, StreamEvent
from ._pipeline import StreamingRAG
from ._protocols import AsyncStreamableLLM, SyncStreamableLLM

__all__ = [
    "AsyncStreamableLLM",
    "EventType",
    "StreamConfig",
    "StreamEvent",
    "StreamingRAG",
    "SyncStreamableLLM",
]

__version__ = "0.1.0"
