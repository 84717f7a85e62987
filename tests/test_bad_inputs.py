"""Every foreign error translated, every bad input refused with a message that says what to do:
no raw redis, msgpack or UnicodeEncodeError reaches a user of the client, the bridge or the
CLI."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streaming_rag.exceptions import InvalidRequest, QueueError, ServerUnavailable
from streaming_rag.wire import validate_job_id, validate_prefix
from streaming_rag_client import StreamingRAGClient

WAIT_S = 60


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streaming_rag_cli", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )


@pytest.fixture
def not_redis() -> Iterator[str]:
    """A loopback TCP server that answers like an HTTP server: not Redis."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        srv.close()
        thread.join(timeout=5)


@pytest.mark.parametrize("bad", ["job\n", "a b", "", "x" * 129, "ü"])
def test_job_ids_must_fully_match(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="job_id must be"):
        validate_job_id(bad)


@pytest.mark.parametrize("bad", ["srag\n", "sp ace", "", "x" * 65])
def test_prefixes_must_fully_match(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="prefix must be"):
        validate_prefix(bad)


def test_a_bad_cursor_is_refused_before_any_read(redis_url: str, key_prefix: str) -> None:
    with (
        StreamingRAGClient(redis_url, prefix=key_prefix) as client,
        pytest.raises(InvalidRequest, match="stream entry id"),
    ):
        next(client.events("some-job", after="not-an-id"))


async def test_a_bad_cursor_is_refused_by_the_async_surface(
    redis_url: str, key_prefix: str
) -> None:
    client = StreamingRAGClient(redis_url, prefix=key_prefix)
    try:
        with pytest.raises(InvalidRequest, match="stream entry id"):
            client.aevents("some-job", after="1-2-3")
    finally:
        await client.aclose()


def test_a_query_with_a_lone_surrogate_is_an_invalid_request(
    redis_url: str, key_prefix: str
) -> None:
    with (
        StreamingRAGClient(redis_url, prefix=key_prefix) as client,
        pytest.raises(InvalidRequest, match="lone surrogate"),
    ):
        client.submit("broken \ud800 text")


@pytest.mark.parametrize("speed", [float("nan"), float("inf"), -1.0, "2"])
def test_replay_speed_must_be_a_finite_number(
    redis_url: str, key_prefix: str, speed: object
) -> None:
    with (
        StreamingRAGClient(redis_url, prefix=key_prefix) as client,
        pytest.raises(InvalidRequest, match="speed must be"),
    ):
        next(client.replay("some-job", speed=speed))  # type: ignore[arg-type]


def test_a_database_index_out_of_range_is_a_typed_error(redis_url: str, key_prefix: str) -> None:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    with (
        StreamingRAGClient(f"{base}/9999", prefix=key_prefix, reconnect_s=1) as client,
        pytest.raises(QueueError, match="database") as info,
    ):
        client.submit("q")
    assert "9999" in str(info.value) or "out of range" in str(info.value)


def test_a_server_that_is_not_redis_is_a_typed_error(not_redis: str) -> None:
    with (
        StreamingRAGClient(not_redis, reconnect_s=1) as client,
        pytest.raises(ServerUnavailable, match="Redis protocol"),
    ):
        client.submit("q")


async def test_the_async_client_names_a_server_that_is_not_redis(not_redis: str) -> None:
    client = StreamingRAGClient(not_redis, reconnect_s=1)
    try:
        with pytest.raises(ServerUnavailable, match="Redis protocol"):
            await client.asubmit("q")
    finally:
        await client.aclose()


# -- the CLI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("speed", ["nan", "inf", "1e-9", "-1", "5000"])
def test_replay_refuses_speeds_that_would_hang_or_mean_nothing(speed: str) -> None:
    proc = cli("replay", "some-job", "--speed", speed)
    assert proc.returncode == 2, proc.stderr
    assert "--speed" in proc.stderr and "Traceback" not in proc.stderr


def test_watch_with_a_bad_cursor_is_one_line(redis_url: str, key_prefix: str) -> None:
    proc = cli(
        "watch", "some-job", "--after", "nope", "--redis-url", redis_url, "--prefix", key_prefix
    )
    assert proc.returncode == 2
    assert "stream entry id" in proc.stderr and "Traceback" not in proc.stderr


def test_ask_says_it_is_waiting_for_a_worker(redis_url: str, key_prefix: str) -> None:
    """No worker runs: `ask` says so after a moment, then ends with the queue ERROR."""
    common = ["--redis-url", redis_url, "--prefix", key_prefix, "--start-timeout", "3"]
    proc = cli("ask", "anyone there?", *common)
    assert proc.returncode == 1, proc.stderr
    assert "waiting for a worker" in proc.stderr
    assert "[error at queue:" in proc.stderr


def test_demo_uses_the_given_prefix_and_survives_a_folder_of_its_own(
    redis_url: str, key_prefix: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = cli(
        "demo", "What is BM25?", "--redis-url", redis_url, "--prefix", key_prefix,
        "--replay-speed", "0", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"prefix {key_prefix!r}" in proc.stdout
    job_id = re.search(r"Replay of job ([0-9a-f]{32})", proc.stdout)
    assert job_id, proc.stdout
    with StreamingRAGClient(redis_url, prefix=key_prefix) as client:
        last = list(client.events(job_id.group(1)))[-1]
    # watching after the last entry of a finished job: nothing to show, and that is no error
    watched = cli(
        "watch", job_id.group(1), "--after", str(last.id),
        "--redis-url", redis_url, "--prefix", key_prefix,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout == ""
    assert f"no events after {last.id}" in watched.stderr and "is done" in watched.stderr


def test_a_worker_on_a_database_the_server_lacks_stops_with_one_line(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    proc = cli(
        "worker", "--redis-url", f"{base}/9999", "--prefix", "srag-test-nodb",
        "--app", "streaming_rag_worker.demo_app:demo_app",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("streaming-rag worker: error:") and "database" in last
    assert "Traceback" not in proc.stderr
