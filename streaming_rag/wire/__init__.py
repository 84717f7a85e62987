"""The wire contract shared by `streaming_rag_worker` and `streaming_rag_client`: key layout,
msgpack codec, job payload model and the Lua scripts with the functions that build their KEYS
and ARGV. No I/O happens here. The queue exceptions are re-exported from
`streaming_rag.exceptions`, where they are defined."""

from ..exceptions import (
    DuplicateJob,
    EventDecodeError,
    InvalidRequest,
    JobNotFound,
    QueueError,
    ServerUnavailable,
)
from .codec import (
    decode_entries,
    decode_entry,
    decode_event,
    decode_raw_entry,
    encode_event,
    pack_job,
    unpack_job,
)
from .keys import DEFAULT_PREFIX, JobKeys, new_job_id, validate_job_id, validate_prefix
from .models import DEFAULT_MAX_QUERY_CHARS, JobRequest, parse_request
from .urls import ServerSpec, parse_url, redact_url

__all__ = [
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
]
