"""`streaming_rag_cli.embedded`: real Valkey processes on 127.0.0.1 (none of them the session's
`redis_url` server), started, restarted, crashed, replicated and watched by a sentinel."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from streaming_rag.exceptions import CLIError
from streaming_rag_cli import embedded
from streaming_rag_cli.embedded import EmbeddedValkey, version
from tests.helpers_queue import wait_until as _wait_until

WAIT_S = 15.0


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """`helpers_queue.wait_until` with this module's bound."""
    _wait_until(condition, what, timeout_s)


def refuses(port: int) -> bool:
    """True when nothing accepts TCP connections on 127.0.0.1:`port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def client(server: EmbeddedValkey) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)


@pytest.fixture
def servers() -> Iterator[list[EmbeddedValkey]]:
    """A list to put servers in; every one is stopped after the test, even when it fails."""
    started: list[EmbeddedValkey] = []
    try:
        yield started
    finally:
        for server in reversed(started):
            server.stop()


def test_version_reads_the_binary_without_starting_it() -> None:
    assert version().split(".")[0].isdigit()


def test_start_stop_and_ping() -> None:
    with EmbeddedValkey() as server:
        assert server.host == "127.0.0.1"
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.running and server.pid is not None
        data_dir = server.data_dir
        assert server.log_path == data_dir / "valkey.log"
        r = client(server)
        assert r.ping() is True
        assert r.config_get("save") | r.config_get("appendonly") == {"save": "", "appendonly": "no"}
        assert r.config_get("bind")["bind"].split() == ["127.0.0.1"]
        r.close()
        port = server.port
    assert not server.running
    assert not data_dir.exists()  # the temporary dir it made
    assert refuses(port)
    server.stop()  # idempotent


def test_restart_keeps_port_and_data_with_appendonly(tmp_path: Path) -> None:
    with EmbeddedValkey(data_dir=tmp_path, appendonly=True) as server:
        port, pid = server.port, server.pid
        r = client(server)
        r.set("kept", "yes")
        r.close()
        server.restart()
        assert (server.port, server.data_dir) == (port, tmp_path.resolve())
        assert server.pid != pid
        r = client(server)
        assert r.get("kept") == b"yes"
        r.close()
    assert tmp_path.exists()  # a given dir is never removed


def test_kill_refuses_connections_and_start_recovers_the_aof() -> None:
    server = EmbeddedValkey(appendonly=True, config={"appendfsync": "always"})
    with server:
        port = server.port
        r = client(server)
        r.set("survives", "a crash")
        r.close()
        server.kill()
        assert not server.running and server.pid is None
        assert refuses(port)
        assert server.data_dir.exists()  # kept for the restart
        server.start()
        assert server.port == port
        r = client(server)
        assert r.get("survives") == b"a crash"
        r.close()


def test_a_replica_receives_what_its_primary_gets(servers: list[EmbeddedValkey]) -> None:
    primary = EmbeddedValkey().start()
    servers.append(primary)
    replica = EmbeddedValkey(config={"replicaof": f"127.0.0.1 {primary.port}"}).start()
    servers.append(replica)
    p, r = client(primary), client(replica)
    try:

        def link_up() -> bool:
            return r.info("replication").get("master_link_status") == "up"

        wait_until(link_up, "the replica's link to its primary")
        p.set("replicated", "1")
        wait_until(lambda: r.get("replicated") == b"1", "the key on the replica")
    finally:
        p.close()
        r.close()


def test_a_sentinel_reports_its_primary(servers: list[EmbeddedValkey]) -> None:
    primary = EmbeddedValkey().start()
    servers.append(primary)
    monitor = f"mymaster 127.0.0.1 {primary.port} 1"
    sentinel = EmbeddedValkey(sentinel=True, config={"sentinel monitor": monitor}).start()
    servers.append(sentinel)
    s = client(sentinel)
    try:
        addr = s.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
        assert [part.decode() for part in addr] == ["127.0.0.1", str(primary.port)]
        port = sentinel.port
        sentinel.restart()  # keeps the config file the sentinel rewrote
        assert sentinel.port == port
        addr = s.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster")
        assert [part.decode() for part in addr] == ["127.0.0.1", str(primary.port)]
    finally:
        s.close()


def test_a_given_port_in_use_fails_in_one_line_naming_the_log() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = EmbeddedValkey(port=port)
        with pytest.raises(CLIError) as caught:
            server.start()
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "in use" in message
    assert str(server.log_path) in message and "\n" not in message
    assert not server.running
    server.stop()


def test_a_free_port_taken_before_binding_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken, taken])
        real = embedded._free_port
        monkeypatch.setattr(embedded, "_free_port", lambda: next(ports, None) or real())
        with EmbeddedValkey() as server:
            assert server.port != taken
            assert client(server).ping() is True


def test_a_bad_config_line_is_named() -> None:
    server = EmbeddedValkey(config={"no-such-directive": "1"})
    with pytest.raises(CLIError, match="no-such-directive") as caught:
        server.start()
    assert "\n" not in str(caught.value)
    assert str(server.log_path) in str(caught.value)
    server.stop()


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="port"):
        EmbeddedValkey(config={"port": "1234"})
    with pytest.raises(ValueError, match="line break"):
        EmbeddedValkey(config={"maxmemory": "1mb\nport 1"})
    with pytest.raises(ValueError, match="sentinel"):
        EmbeddedValkey(sentinel=True, appendonly=True)
    with pytest.raises(RuntimeError, match="start"):
        _ = EmbeddedValkey().url
    with EmbeddedValkey() as server, pytest.raises(RuntimeError, match="already running"):
        server.start()
