"""Key layout. Two places: the per-job keys live on the events server (standalone, Sentinel
or a Redis Cluster), everything else on the queue server (standalone or Sentinel; by default
both are the one server). The prefix separates deployments (and test runs) on one server.

Every per-job key carries its job's *bucket* as a Redis Cluster hash tag (``{b<NN>.<n>}``,
`BUCKETS` buckets, picked by CRC-32 of the job id; `BUCKET_TAGS` spaces them evenly over the
slots): one job's keys share one slot, so every
script stays within a slot, and the jobs of one bucket share a slot too, so one blocking XREAD
can follow many streams of a bucket at once (the client's fan-out reads one bucket per read on
a cluster, and every stream in one read on a single server).

=================================  ======================================================
key                                holds
=================================  ======================================================
``{prefix}:{<tag>}:<job_id>:events``  the job's event stream (one entry per `StreamEvent`)
``{prefix}:{<tag>}:<job_id>:job``     hash: status, created_ms, nonce, start_timeout_ms,
                                      start_deadline_ms, started_ms, finished_ms, worker,
                                      cancel
``{prefix}:{<tag>}:<job_id>:lease``   the running worker's liveness lease (short TTL)
``{prefix}:{<tag>}:<job_id>:watchers``  hash: who follows the job now (watcher id ->
                                        "<expiry ms>:<count>", see `presence`)

queue server:

``{prefix}:queue``               the arq queue (sorted set of arq job ids)
``{prefix}:cancel``              pub/sub channel: job ids whose cancellation was asked
``{prefix}:wake``                list: each submit pushes its arq job id; an idle worker BLPOPs it
``{prefix}:jobs``                sorted set: unfinished job ids, scored by their next sweep time
``{prefix}:sweep-lock``          the lock of the worker sweeping now
``arq:job:{prefix}:<job_id>``    arq's own job record (arq's fixed key prefix)
``arq:in-progress:{prefix}:...``  arq's marker of a claimed job
``arq:retry:{prefix}:<job_id>``  arq's try counter of the job
=============================  ======================================================

The arq job id is ``{prefix}:<job_id>`` so two deployments never share an arq job record.
"""

from __future__ import annotations

import re
import uuid
import zlib
from dataclasses import dataclass, field

from ..exceptions import InvalidRequest

__all__ = [
    "BUCKETS",
    "BUCKET_TAGS",
    "DEFAULT_PREFIX",
    "DEFAULT_REDIS_URL",
    "JobKeys",
    "new_job_id",
    "validate_job_id",
    "validate_prefix",
]

DEFAULT_PREFIX = "srag"
#: The server used when neither an argument nor `REDIS_URL` names one.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: How many hash-tag buckets the jobs spread over (so a cluster spreads them over up to this
#: many slots, hence shards). Part of the wire contract: every party must agree.
BUCKETS = 64
#: arq's fixed key prefixes (`arq.constants`; a worker test pins them to arq's own values).
ARQ_JOB_KEY_PREFIX = "arq:job:"
ARQ_IN_PROGRESS_KEY_PREFIX = "arq:in-progress:"
ARQ_RETRY_KEY_PREFIX = "arq:retry:"
_JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def new_job_id() -> str:
    """A fresh random job id (uuid4 hex)."""
    return uuid.uuid4().hex


def validate_job_id(job_id: object) -> str:
    """Return `job_id` if it is 1-128 of `A-Z a-z 0-9 . _ -`, else raise `InvalidRequest`."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InvalidRequest(
            f"job_id must be 1-128 characters of letters, digits, '.', '_' or '-'; got {job_id!r}"
        )
    return job_id


def validate_prefix(prefix: object) -> str:
    """Return `prefix` if it is 1-64 of `A-Z a-z 0-9 . _ : -`, else raise `InvalidRequest`."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise InvalidRequest(
            f"prefix must be 1-64 characters of letters, digits, '.', '_', ':' or '-'; "
            f"got {prefix!r}"
        )
    return prefix


def bucket_of(job_id: str) -> int:
    """The job's bucket: CRC-32 of its id (UTF-8) modulo `BUCKETS`."""
    return zlib.crc32(job_id.encode()) % BUCKETS


#: The hash tag of each bucket (without braces). Bucket NN's tag is ``bNN.<n>`` with the
#: smallest n whose Cluster slot lies in the middle half of slots NN*256 .. NN*256+255, so the
#: 64 buckets sit evenly over the 16,384 slots and shards that split the slots evenly (as
#: ``--cluster create`` does) get equal shares: 32/32 on 2 shards, 21-22 on 3, 16 each on 4,
#: 8 each on 8. (Plain ``bNN`` tags would hash anywhere: 18-24 per shard on 3.)
BUCKET_TAGS = (
    "b00.63",
    "b01.9",
    "b02.36",
    "b03.171",
    "b04.177",
    "b05.15",
    "b06.69",
    "b07.40",
    "b08.300",
    "b09.3",
    "b10.61",
    "b11.48",
    "b12.177",
    "b13.20",
    "b14.124",
    "b15.17",
    "b16.143",
    "b17.376",
    "b18.28",
    "b19.167",
    "b20.66",
    "b21.105",
    "b22.33",
    "b23.123",
    "b24.44",
    "b25.130",
    "b26.11",
    "b27.38",
    "b28.352",
    "b29.167",
    "b30.64",
    "b31.156",
    "b32.76",
    "b33.137",
    "b34.41",
    "b35.68",
    "b36.29",
    "b37.322",
    "b38.306",
    "b39.133",
    "b40.162",
    "b41.44",
    "b42.38",
    "b43.11",
    "b44.32",
    "b45.142",
    "b46.67",
    "b47.164",
    "b48.24",
    "b49.169",
    "b50.130",
    "b51.47",
    "b52.8",
    "b53.143",
    "b54.31",
    "b55.18",
    "b56.9",
    "b57.176",
    "b58.26",
    "b59.367",
    "b60.68",
    "b61.41",
    "b62.1",
    "b63.14",
)


def bucket_tag(bucket: int) -> str:
    """The hash tag of a bucket's keys, braces included: ``{b07.40}``."""
    return "{" + BUCKET_TAGS[bucket] + "}"


@dataclass(frozen=True, slots=True)
class JobKeys:
    """All key names of one job under one prefix."""

    prefix: str
    job_id: str
    #: ``{prefix}:{<bucket tag>}:<job_id>``: what every per-job key starts with.
    base: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tag = bucket_tag(bucket_of(self.job_id))
        object.__setattr__(self, "base", f"{self.prefix}:{tag}:{self.job_id}")

    @property
    def bucket(self) -> int:
        """The job's bucket (`bucket_of`): its keys' hash tag, hence its Cluster slot."""
        return bucket_of(self.job_id)

    @property
    def events(self) -> str:
        return self.base + ":events"

    @property
    def meta(self) -> str:
        return self.base + ":job"

    @property
    def lease(self) -> str:
        return self.base + ":lease"

    @property
    def watchers(self) -> str:
        return self.base + ":watchers"

    @property
    def queue(self) -> str:
        return queue_name(self.prefix)

    @property
    def cancel_channel(self) -> str:
        return cancel_channel(self.prefix)

    @property
    def wake(self) -> str:
        return wake_key(self.prefix)

    @property
    def index(self) -> str:
        return index_key(self.prefix)

    @property
    def arq_job_id(self) -> str:
        return f"{self.prefix}:{self.job_id}"

    @property
    def arq_job(self) -> str:
        return ARQ_JOB_KEY_PREFIX + self.arq_job_id

    @property
    def arq_in_progress(self) -> str:
        return ARQ_IN_PROGRESS_KEY_PREFIX + self.arq_job_id

    @property
    def arq_retry(self) -> str:
        return ARQ_RETRY_KEY_PREFIX + self.arq_job_id

    @classmethod
    def from_arq_job_id(cls, prefix: str, arq_job_id: str) -> JobKeys | None:
        """The keys of the job whose arq id is `arq_job_id` (``<prefix>:<job_id>``), or None
        when that id is not one of this prefix's jobs (another arq job on the same queue)."""
        head = prefix + ":"
        if not arq_job_id.startswith(head) or len(arq_job_id) == len(head):
            return None
        return cls(prefix, arq_job_id[len(head) :])


def queue_name(prefix: str) -> str:
    """The arq queue (sorted set) of a deployment."""
    return f"{prefix}:queue"


def cancel_channel(prefix: str) -> str:
    """The pub/sub channel on which cancellations are announced to workers."""
    return f"{prefix}:cancel"


def index_key(prefix: str) -> str:
    """The sorted set of unfinished jobs (job id, scored by when a sweep should next CHECK
    it): the workers' sweep ends jobs nobody watches (see `streaming_rag_worker.sweeper`)."""
    return f"{prefix}:jobs"


def sweep_lock_key(prefix: str) -> str:
    """The lock one worker of a deployment holds while it sweeps (SET NX PX)."""
    return f"{prefix}:sweep-lock"


def wake_key(prefix: str) -> str:
    """The list on which each submit pushes one wake-up token for an idle worker."""
    return f"{prefix}:wake"


def taken_key(prefix: str) -> str:
    """The list an idle worker's BLMOVE moves a wake-up token to, for its pipelined TAKE."""
    return f"{prefix}:wake:taken"
