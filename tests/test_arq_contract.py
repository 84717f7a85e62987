"""The arq internals `StreamingWorker` overrides or calls, pinned: this fails when an arq
release changes them, before a worker misbehaves in production (arq is pinned to 0.28.x)."""

from __future__ import annotations

import inspect

import arq
import arq.constants
import arq.jobs
import arq.worker
from arq.connections import create_pool, log_redis_info

from streaming_rag.wire import keys
from streaming_rag_worker.streaming_worker import StreamingWorker

#: Worker methods StreamingWorker overrides, with the signatures it was written against.
OVERRIDDEN = {
    "main": "(self) -> None",
    "start_jobs": "(self, job_ids: list[bytes]) -> None",
    "run_job": "(self, job_id: str, score: int) -> None",
    "close": "(self) -> None",
    "_release_sem_dec_counter_on_complete": "(self) -> None",
}

#: arq functions and methods StreamingWorker calls, and the parameters it passes.
CALLED = {
    arq.worker.Worker.finish_job: [
        "job_id",
        "finish",
        "result_data",
        "result_timeout_s",
        "keep_result_forever",
        "incr_score",
        "keep_in_progress",
    ],
    arq.worker.Worker._poll_iteration: [],
    arq.worker.Worker._jobs_started: [],
    arq.worker.Worker.handle_sig: ["signum"],
    arq.jobs.deserialize_job_raw: ["r", "deserializer"],
    create_pool: [
        "settings_",
        "retry",
        "job_serializer",
        "job_deserializer",
        "default_queue_name",
        "expires_extra_ms",
    ],
    log_redis_info: ["redis", "log_func"],
}

#: Worker attributes StreamingWorker reads or writes.
ATTRIBUTES = [
    "allow_pick_jobs",
    "burst",
    "ctx",
    "functions",
    "in_progress_timeout_s",
    "job_counter",
    "job_deserializer",
    "job_serializer",
    "job_tasks",
    "job_timeout_s",
    "jobs_complete",
    "jobs_failed",
    "loop",
    "main_task",
    "max_burst_jobs",
    "max_jobs",
    "poll_delay_s",
    "queue_name",
    "redis_settings",
    "sem",
    "tasks",
    "expires_extra_ms",
    "health_check_key",
    "_handle_signals",
    "_job_completion_wait",
    "_pool",
]


def test_arq_is_the_pinned_minor() -> None:
    assert arq.VERSION.startswith("0.28."), arq.VERSION


def test_overridden_methods_keep_their_signatures() -> None:
    for name, expected in OVERRIDDEN.items():
        theirs = getattr(arq.worker.Worker, name)
        assert str(inspect.signature(theirs)).replace("'", "") == expected, name
        assert name in StreamingWorker.__dict__, f"StreamingWorker no longer overrides {name}"


def test_called_arq_functions_take_the_parameters_we_pass() -> None:
    for function, params in CALLED.items():
        names = [p for p in inspect.signature(function).parameters if p != "self"]
        assert names[: len(params)] == params, function.__qualname__


def test_worker_attributes_we_use_exist() -> None:
    async def job(ctx: dict[str, object]) -> None:
        """A job function: arq refuses a worker without one."""

    worker = arq.worker.Worker(functions=[job], redis_settings=None, handle_signals=False)
    missing = [a for a in ATTRIBUTES if not hasattr(worker, a)]
    assert not missing


def test_arq_key_prefixes_match_the_wire_contract() -> None:
    assert arq.constants.job_key_prefix == keys.ARQ_JOB_KEY_PREFIX
    assert arq.constants.in_progress_key_prefix == keys.ARQ_IN_PROGRESS_KEY_PREFIX
    assert arq.constants.retry_key_prefix == keys.ARQ_RETRY_KEY_PREFIX
