"""The streaming-rag client: submit questions to workers and follow their answers.

from streaming_rag_client import StreamingRAGClient, JobNotFound

with StreamingRAGClient("redis://127.0.0.1:6379/0") as rag:
    for chunk in rag.stream("What is RAG?"):
        print(chunk, end="", flush=True)
"""

from streaming_rag.exceptions import (
    DuplicateJob,
    EventDecodeError,
    InvalidRequest,
    JobNotFound,
    QueueError,
    ServerUnavailable,
)

from ._client import StreamingRAGClient
from ._core import JobStatus

__all__ = [
    "DuplicateJob",
    "EventDecodeError",
    "InvalidRequest",
    "JobNotFound",
    "JobStatus",
    "QueueError",
    "ServerUnavailable",
    "StreamingRAGClient",
]
