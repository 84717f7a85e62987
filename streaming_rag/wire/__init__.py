"""The wire layer shared by `worker` and `client`: key layout, msgpack codec, job payload
model, Lua scripts and the queue exceptions. No I/O happens here."""

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
    "ServerUnavailable",
    "decode_entries",
    "decode_entry",
    "decode_event",
    "decode_raw_entry",
    "encode_event",
    "new_job_id",
    "pack_job",
    "parse_request",
    "unpack_job",
    "validate_job_id",
    "validate_prefix",
]
