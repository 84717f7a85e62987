"""Server URLs (`streaming_rag.wire.urls`): every accepted form parsed, every refusal typed and
readable, every secret masked; then the same URLs used for real by the client and the worker
against a password-protected server and a Unix socket (their own embedded Valkeys, never the
suite's shared server).

The sentinel forms against a real sentinel are in test_sentinel.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from streaming_rag.exceptions import InvalidRequest, ServerUnavailable, WorkerConfigError
from streaming_rag.wire import ServerSpec, parse_url, redact_url
from streaming_rag_cli.embedded import EmbeddedValkey
from streaming_rag_client import StreamingRAGClient
from streaming_rag_worker import WorkerConfig, build_worker
from tests.helpers_queue import running_worker
from tests.queue_apps import ANSWER_WORDS, make_rag

SECRET = "s3cret"
ANSWER = "".join(w + " " for w in ANSWER_WORDS)
ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 60


# -- parsing: every accepted form ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", ServerSpec("standalone", host="127.0.0.1", port=6379)),
        ("redis://h", ServerSpec("standalone", host="h", port=6379)),
        ("redis://", ServerSpec("standalone", host="127.0.0.1", port=6379)),
        ("REDIS://H:7/3", ServerSpec("standalone", host="h", port=7, db=3)),
        ("redis://h:7?db=4", ServerSpec("standalone", host="h", port=7, db=4)),
        ("redis://[::1]:7/1", ServerSpec("standalone", host="::1", port=7, db=1)),
        (
            "rediss://ada:s3cret@h:7/2",
            ServerSpec(
                "standalone", host="h", port=7, db=2, username="ada", password=SECRET, tls=True
            ),
        ),
        (
            "redis://:s3cret@h:7/0",
            ServerSpec("standalone", host="h", port=7, password=SECRET),
        ),
        (
            "redis://h:7/0?password=s3cret",
            ServerSpec("standalone", host="h", port=7, password=SECRET),
        ),
        (
            "redis://:p%40ss%2Fw%3Ard@h:7",
            ServerSpec("standalone", host="h", port=7, password="p@ss/w:rd"),
        ),
        ("unix:///tmp/v.sock", ServerSpec("standalone", path="/tmp/v.sock")),
        (
            "unix://:s3cret@/tmp/v.sock?db=5",
            ServerSpec("standalone", path="/tmp/v.sock", db=5, password=SECRET),
        ),
        (
            "unix:///tmp/v.sock?db=5&password=s3cret",
            ServerSpec("standalone", path="/tmp/v.sock", db=5, password=SECRET),
        ),
        (
            "redis+sentinel://127.0.0.1:26380/mymaster",
            ServerSpec("sentinel", sentinels=(("127.0.0.1", 26380),), service_name="mymaster"),
        ),
        (
            "redis+sentinel://:s3cret@a:1,b,[::1]:3/mymaster/2?sentinel_password=sp",
            ServerSpec(
                "sentinel",
                sentinels=(("a", 1), ("b", 26379), ("::1", 3)),
                service_name="mymaster",
                db=2,
                password=SECRET,
                sentinel_password="sp",
            ),
        ),
        (
            "rediss+sentinel://u:s3cret@a/svc?db=1",
            ServerSpec(
                "sentinel",
                sentinels=(("a", 26379),),
                service_name="svc",
                db=1,
                username="u",
                password=SECRET,
                tls=True,
            ),
        ),
    ],
)
def test_every_accepted_form_parses(url: str, expected: ServerSpec) -> None:
    assert parse_url(url) == expected


def test_connection_kwargs_are_redis_py_keywords() -> None:
    assert parse_url("rediss://u:s3cret@h:7/2").connection_kwargs() == {
        "host": "h",
        "port": 7,
        "db": 2,
        "username": "u",
        "password": SECRET,
        "ssl": True,
    }
    assert parse_url("unix:///tmp/v.sock?db=1").connection_kwargs() == {
        "unix_socket_path": "/tmp/v.sock",
        "db": 1,
    }
    sentinel = parse_url("redis+sentinel://:s3cret@a:1/svc/3?sentinel_password=sp")
    assert sentinel.connection_kwargs() == {"db": 3, "password": SECRET}  # no address: asked
    assert sentinel.sentinel_kwargs() == {"password": "sp"}
    assert parse_url("redis+sentinel://a/svc").sentinel_kwargs() == {}


# -- parsing: refusals ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("127.0.0.1:6379", "no scheme"),
        (":s3cret@127.0.0.1:6379", "no scheme"),
        ("http://:s3cret@h/0", "unknown scheme"),
        ("redis://:s3cret@h:0", "port"),
        ("redis://:s3cret@h:65536", "port"),
        ("redis://:s3cret@h:x1", "port"),
        ("redis://:s3cret@h/-1", "db"),
        ("redis://:s3cret@h/one", "db"),
        ("redis://:s3cret@h/1?db=2", "db is given twice"),
        ("redis://h?db=x", "db"),
        ("redis://:s3cret@h?password=s3cret", "password is given twice"),
        ("redis://:s3cret@h?pasword=x", "unknown query option 'pasword'"),
        ("redis://h?db=1&db=2", "given twice"),
        ("redis://:s3cret@a,b/0", "several hosts"),
        ("redis://:s3cret@h/0#frag", "fragment"),
        ("redis://:s3cret@h?sentinel_password=x", "redis+sentinel:// URLs only"),
        ("redis+sentinel://:s3cret@h:1", "no service name"),
        ("redis+sentinel://:s3cret@h:1/", "no service name"),
        ("redis+sentinel://:s3cret@/svc", "no sentinel host"),
        ("redis+sentinel://:s3cret@a:1,:2/svc", "empty host"),
        ("redis+sentinel://:s3cret@a:1,b:x/svc", "port"),
        ("redis+sentinel://a/svc/x", "db"),
        ("unix://:s3cret@", "no socket path"),
        ("unix://:s3cret@host/tmp/v.sock", "no host"),
        ("redis://:s3cret@[::1:7", "cannot be split"),
        # malformed userinfo: an unencoded '/', '?' or '#' in the password
        ("redis://:s3/cret@h:7/0", "empty host"),
        ("redis://:s3?cret=1@h:7/0", "unknown query option (masked)"),
    ],
)
def test_invalid_urls_are_refused_naming_the_forms_never_the_password(
    url: str, reason: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_url(url)
    message = str(info.value)
    assert reason in message
    assert "Accepted forms: redis://" in message and "redis+sentinel://" in message
    for piece in ("s3cret", "s3", "cret"):
        assert piece not in message


def test_a_non_string_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="must be a string"):
        parse_url(6379)  # type: ignore[arg-type]


# -- masking -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://h:1/0", "redis://h:1/0"),
        ("redis://ada@h:1/0", "redis://ada@h:1/0"),
        ("redis://ada:s3cret@h:1/0", "redis://ada:***@h:1/0"),
        ("redis://:s3cret@h:1/0", "redis://:***@h:1/0"),
        ("redis://h:1/0?password=s3cret&db=1", "redis://h:1/0?password=***&db=1"),
        ("redis://h?db=1&PASSWORD=s3cret", "redis://h?db=1&PASSWORD=***"),
        (
            "redis+sentinel://:s3cret@a:1,b:2/svc?sentinel_password=s3cret",
            "redis+sentinel://:***@a:1,b:2/svc?sentinel_password=***",
        ),
        ("unix://:s3cret@/tmp/v.sock", "unix://:***@/tmp/v.sock"),
        # malformed: no scheme, unencoded '@', '/', '?', ':' in the password
        ("ada:s3cret@h:1", "ada:***@h:1"),
        ("redis://:s3@cret@h", "redis://:***@h"),
        ("redis://:s3/cret@h/0", "redis://:***@h/0"),
        ("redis://:s3?cret@h/0", "redis://:***@h/0"),
        ("redis://:s3:cret@h/0", "redis://:***@h/0"),
        ("redis://h/0?sentinel_password=s3@c:ret", "redis://h/0?sentinel_password=***"),
        ("", ""),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_masks_every_password(url: str, masked: str) -> None:
    assert redact_url(url) == masked


def test_a_spec_never_shows_its_passwords() -> None:
    spec = parse_url("redis+sentinel://ada:s3cret@a:1/svc/2?sentinel_password=s3cret")
    for text in (repr(spec), str(spec), f"{spec}", repr([spec])):
        assert SECRET not in text
    assert str(spec) == "redis+sentinel://ada:***@a:1/svc/2?sentinel_password=***"
    assert repr(spec) == f"ServerSpec({str(spec)!r})"
    assert str(parse_url("rediss://:s3cret@h:7/1")) == "rediss://:***@h:7/1"
    assert str(parse_url("unix:///tmp/v.sock?password=s3cret")) == "unix://:***@/tmp/v.sock?db=0"


# -- the client and the worker show no password --------------------------------------------------
CLOSED = f"redis://ada:{SECRET}@127.0.0.1:1/0"  # nothing listens on port 1


def test_client_repr_and_unavailable_message_hide_the_password() -> None:
    rag = StreamingRAGClient(CLOSED, reconnect_s=0.2)
    try:
        assert SECRET not in repr(rag)
        assert "ada:***@127.0.0.1:1" in repr(rag)
        with pytest.raises(ServerUnavailable) as info:
            rag.submit("q")
        assert SECRET not in str(info.value) and SECRET not in info.value.url
        assert "ada:***@127.0.0.1:1" in str(info.value)
    finally:
        rag.close()


def test_client_refuses_a_bad_url_at_construction() -> None:
    with pytest.raises(InvalidRequest, match="no scheme") as info:
        StreamingRAGClient(f":{SECRET}@127.0.0.1:6379")
    assert SECRET not in str(info.value)


def test_worker_config_and_its_arq_settings_hide_the_password() -> None:
    config = WorkerConfig(redis_url=CLOSED)
    assert SECRET not in repr(config) and SECRET not in str(config)
    assert "redis_url='redis://ada:***@127.0.0.1:1/0'" in repr(config)
    settings = config.redis_settings()
    assert settings.password == SECRET  # handed to arq, never shown
    assert SECRET not in repr(settings)
    assert (settings.host, settings.port, settings.database, settings.username) == (
        "127.0.0.1",
        1,
        0,
        "ada",
    )


def test_worker_arq_settings_for_each_form() -> None:
    tls = WorkerConfig(redis_url="rediss://h:7/3").redis_settings()
    assert (tls.host, tls.port, tls.database, tls.ssl, tls.sentinel) == ("h", 7, 3, True, False)
    unix = WorkerConfig(redis_url="unix:///tmp/v.sock?db=2&password=pw").redis_settings()
    assert (unix.unix_socket_path, unix.database, unix.password) == ("/tmp/v.sock", 2, "pw")
    sentinel = WorkerConfig(redis_url="redis+sentinel://:pw@a:1,b:2/svc/4").redis_settings()
    assert sentinel.sentinel and sentinel.sentinel_master == "svc"
    assert (sentinel.host, sentinel.database, sentinel.password) == ([("a", 1), ("b", 2)], 4, "pw")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"http://:{SECRET}@h/0", "unknown scheme"),
        (f"redis://:{SECRET}@h/x", "db"),
        (f"redis+sentinel://a/svc?sentinel_password={SECRET}", "password-protected sentinels"),
    ],
)
def test_worker_config_refuses_bad_urls_without_showing_the_password(
    url: str, message: str
) -> None:
    with pytest.raises(WorkerConfigError, match="redis_url") as info:
        WorkerConfig(redis_url=url)
    assert message in str(info.value)
    assert SECRET not in str(info.value)


# -- real servers: a password-protected one, a Unix socket ---------------------------------------
@pytest.fixture
def protected() -> Iterator[EmbeddedValkey]:
    """An embedded Valkey requiring the password `SECRET` (set after start: `EmbeddedValkey`
    checks readiness with an unauthenticated INFO)."""
    server = EmbeddedValkey().start()
    try:
        admin = redis.Redis(host=server.host, port=server.port, socket_timeout=5)
        admin.config_set("requirepass", SECRET)
        admin.close()
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    "form", ["redis://:{pw}@127.0.0.1:{port}/0", "redis://127.0.0.1:{port}/0?password={pw}"]
)
async def test_client_and_worker_log_in_with_the_password_of_the_url(
    protected: EmbeddedValkey, key_prefix: str, form: str
) -> None:
    url = form.format(pw=SECRET, port=protected.port)
    async with (
        running_worker(url, key_prefix, make_rag()),
        StreamingRAGClient(url, prefix=key_prefix, poll_interval_s=0.2) as rag,
    ):
        answer = await asyncio.wait_for(rag.aquery("what is rag?"), HANG_GUARD_S)
        assert answer["answer"] == ANSWER
        sync = await asyncio.to_thread(rag.query, "and in sync?")
        assert sync["answer"] == ANSWER


def test_a_wrong_password_fails_the_client_at_once_without_showing_it(
    protected: EmbeddedValkey, key_prefix: str
) -> None:
    wrong = "n0t-the-pw"
    url = f"redis://:{wrong}@127.0.0.1:{protected.port}/0"
    rag = StreamingRAGClient(url, prefix=key_prefix, reconnect_s=30)
    with rag, pytest.raises(ServerUnavailable) as info:
        rag.submit("q")  # refused at once: no waiting out reconnect_s
    assert wrong not in str(info.value) and SECRET not in str(info.value)
    assert ":***@127.0.0.1" in str(info.value)


async def test_a_wrong_password_fails_the_worker_without_showing_it(
    protected: EmbeddedValkey, key_prefix: str
) -> None:
    wrong = "n0t-the-pw"
    config = WorkerConfig(redis_url=f"redis://127.0.0.1:{protected.port}/0?password={wrong}")
    settings = dataclasses.replace(config.redis_settings(), conn_retries=0)  # no arq retries
    worker = build_worker(config, rag=make_rag(), handle_signals=False, redis_settings=settings)
    try:
        with pytest.raises(redis.exceptions.AuthenticationError) as info:
            await asyncio.wait_for(worker.async_run(), HANG_GUARD_S)
    finally:
        with contextlib.suppress(Exception):
            await worker.close()
    assert wrong not in str(info.value) and wrong not in repr(info.value)


def test_a_wrong_password_fails_the_worker_command_in_one_line(
    protected: EmbeddedValkey, key_prefix: str
) -> None:
    wrong = "n0t-the-pw"
    url = f"redis://:{wrong}@127.0.0.1:{protected.port}/0"
    app = "streaming_rag_worker.demo_app:demo_app"
    argv = ["worker", "--redis-url", url, "--prefix", key_prefix, "--app", app]
    proc = subprocess.run(
        [sys.executable, "-m", "streaming_rag_cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert wrong not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("streaming-rag worker: error: ") and ":***@127.0.0.1" in last


async def test_client_and_worker_over_a_unix_socket(key_prefix: str) -> None:
    with tempfile.TemporaryDirectory(prefix="srag-", dir="/tmp") as folder:  # short socket path
        socket_path = f"{folder}/v.sock"
        config = {"unixsocket": socket_path, "unixsocketperm": "700"}
        with EmbeddedValkey(config=config):
            url = f"unix://{socket_path}?db=1"
            async with (
                running_worker(url, key_prefix, make_rag()),
                StreamingRAGClient(url, prefix=key_prefix, poll_interval_s=0.2) as rag,
            ):
                answer = await asyncio.wait_for(rag.aquery("over a socket?"), HANG_GUARD_S)
                assert answer["answer"] == ANSWER
            check = redis.Redis(unix_socket_path=socket_path, db=1)
            try:
                assert any(True for _ in check.scan_iter(match=f"{key_prefix}:*"))  # db 1 used
            finally:
                check.close()
