"""The HTTP bridge on the open web: access control (`authorize=`, signed capability links),
browser-safe requests (415, CORS, 413 before buffering, 422 for deep JSON, 429) and SSE as
browsers expect it (`retry:`, 204 after the end, streams ended at shutdown). Real uvicorn on
127.0.0.1 throughout, raw sockets where the bytes on the wire are the point."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.exceptions import HTTPException
from starlette.requests import Request

from streaming_rag_cli._serve import RedactTokens, is_loopback
from streaming_rag_client import InvalidRequest, StreamingRAGClient
from streaming_rag_client._auth import Capabilities
from streaming_rag_client._sse import SHUTTING_DOWN
from streaming_rag_client.web import SECRET_ENV, Forbidden, Unauthorized, create_app, end_streams
from tests.helpers_web import WAIT_S, Comment, Message, Stack, messages, sse, web_stack
from tests.queue_apps import GatedLLM

SECRET = "test-secret-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
JSON = {"content-type": "application/json"}


async def submit(stack: Stack, **kwargs: Any) -> httpx.Response:
    return await stack.http.post("/answers", json={"query": "What is RAG?"}, **kwargs)


# -- authorize= ------------------------------------------------------------------------------------
def _sync_authorize(calls: list[tuple[str, str | None]]) -> Any:
    def authorize(request: Request, action: str, job_id: str | None) -> bool:
        calls.append((action, job_id))
        user = request.headers.get("x-user")
        if user is None:
            raise Unauthorized("log in first")
        if user == "mallory":
            raise Forbidden("mallory is banned")
        return user == "alice"

    return authorize


def _async_authorize(calls: list[tuple[str, str | None]]) -> Any:
    inner = _sync_authorize(calls)

    async def authorize(request: Request, action: str, job_id: str | None) -> bool:
        await asyncio.sleep(0)  # a real await: the bridge must await the verdict
        return bool(inner(request, action, job_id))

    return authorize


@pytest.mark.parametrize("make", [_sync_authorize, _async_authorize], ids=["sync", "async"])
async def test_authorize_allows_refuses_and_asks_for_credentials(redis_url, key_prefix, make):
    calls: list[tuple[str, str | None]] = []
    async with web_stack(redis_url, key_prefix, authorize=make(calls)) as stack:
        alice, eve = {"x-user": "alice"}, {"x-user": "eve"}
        response = await submit(stack, headers=alice)
        assert response.status_code == 202
        job_id = response.json()["job_id"]
        assert calls == [("submit", None)]

        anonymous = await submit(stack)
        assert anonymous.status_code == 401
        assert anonymous.json() == {"detail": "log in first"}
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert (await submit(stack, headers=eve)).json() == {"detail": "not allowed to submit"}
        banned = await submit(stack, headers={"x-user": "mallory"})
        assert (banned.status_code, banned.json()) == (403, {"detail": "mallory is banned"})

        routes = [
            ("watch", "GET", f"/answers/{job_id}/events"),
            ("status", "GET", f"/answers/{job_id}"),
            ("cancel", "DELETE", f"/answers/{job_id}"),
        ]
        for action, method, path in routes:
            calls.clear()
            refused = await stack.http.request(method, path, headers=eve)
            assert refused.status_code == 403, path
            assert refused.json() == {"detail": f"not allowed to {action} this job"}
            assert (await stack.http.request(method, path)).status_code == 401
            assert calls == [(action, job_id), (action, job_id)]
        async with stack.http.stream("GET", f"/answers/{job_id}/events", headers=alice) as s:
            assert (await messages(sse(s)))[-1].event == "generation_done"
        assert (await stack.http.get(f"/answers/{job_id}", headers=alice)).json()[
            "status"
        ] == "done"
        assert (await stack.http.delete(f"/answers/{job_id}", headers=alice)).status_code == 200


def readme_bearer_authorize(api_token: str) -> Any:
    """README's bearer-token example, verbatim but for where the token comes from."""
    import hmac

    from streaming_rag_client.web import Unauthorized

    API_TOKEN = api_token

    def authorize(request: Request, action: str, job_id: str | None) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send Authorization: Bearer <token>")
        return hmac.compare_digest(token.encode(), API_TOKEN.encode())

    return authorize


async def test_the_readme_bearer_example_and_http_exceptions(redis_url, key_prefix):
    async with web_stack(
        redis_url, key_prefix, authorize=readme_bearer_authorize("t0ken")
    ) as stack:
        assert (await submit(stack)).status_code == 401
        wrong = await submit(stack, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 403
        response = await submit(stack, headers={"authorization": "Bearer t0ken"})
        assert response.status_code == 202

    def teapot(request: Request, action: str, job_id: str | None) -> bool:
        raise HTTPException(418, "short and stout", headers={"X-Why": "tea"})

    async with web_stack(redis_url, key_prefix, authorize=teapot) as stack:
        response = await submit(stack)
        assert (response.status_code, response.json()) == (418, {"detail": "short and stout"})
        assert response.headers["x-why"] == "tea"


# -- capability links ------------------------------------------------------------------------------
def _token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


async def test_capability_links_end_to_end(redis_url, key_prefix):
    llm = GatedLLM()
    async with web_stack(redis_url, key_prefix, llm, secret=SECRET) as stack:
        response = await submit(stack)
        assert response.status_code == 202
        body = response.json()
        job_id = body["job_id"]
        assert set(body) == {
            "job_id",
            *("events_url", "status_url", "cancel_url", "watch_url"),
            *("watch_token", "cancel_token", "expires_at"),
        }
        assert response.headers["location"] == body["status_url"]
        assert abs(body["expires_at"] - (time.time() + 3600)) < 60  # the client's retention
        watch, cancel = body["watch_token"], body["cancel_token"]
        assert _token(body["events_url"]) == _token(body["status_url"]) == watch
        assert _token(body["cancel_url"]) == cancel
        assert body["watch_url"].startswith(f"/rag/?job={job_id}&token=")
        assert _token(body["watch_url"]) == watch
        assert SECRET not in response.text

        async with stack.http.stream("GET", stack.url(body["events_url"])) as stream:
            assert stream.status_code == 200
            items = sse(stream)
            async for item in items:
                if isinstance(item, Message) and item.event == "chunk":
                    break
            status = await stack.http.get(stack.url(body["status_url"]))
            assert status.json() == {"job_id": job_id, "status": "running", "watchers": 1}
            bearer = {"authorization": f"Bearer {watch}"}
            assert (await stack.http.get(f"/answers/{job_id}", headers=bearer)).status_code == 200

            # a watch token never grants cancel; no token asks for one
            refused = await stack.http.delete(f"/answers/{job_id}", params={"token": watch})
            assert refused.status_code == 403
            assert refused.json() == {
                "detail": "a watch token does not grant cancel; the submitter's does"
            }
            assert (await stack.http.delete(f"/answers/{job_id}")).status_code == 401
            assert (await stack.http.get(f"/answers/{job_id}/events")).status_code == 401

            cancelled = await stack.http.delete(stack.url(body["cancel_url"]))
            assert cancelled.json() == {"cancelled": True}
            rest = await messages(items)
        assert rest[-1].event == "error"


async def test_tampered_expired_and_foreign_tokens_are_refused(redis_url, key_prefix):
    async with web_stack(redis_url, key_prefix, secret=SECRET) as stack:
        a, b = (await submit(stack)).json(), (await submit(stack)).json()
        job_b = b["job_id"]
        exp, scope, sig = a["cancel_token"].split(".")
        flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
        later = str(int(exp) + 1)
        cases = {
            "a's token on b": a["cancel_token"],
            "tampered signature": f"{exp}.{scope}.{flipped}",
            "extended expiry": f"{later}.{scope}.{sig}",
            "widened scope": a["watch_token"].replace(".watch.", ".cancel."),
            "garbage": "not-a-token",
            "another secret": Capabilities("x" * 32, ttl_s=60).mint(job_b, "cancel")[0],
        }
        for name, token in cases.items():
            for method, path in [("GET", f"/answers/{job_b}"), ("DELETE", f"/answers/{job_b}")]:
                response = await stack.http.request(method, path, params={"token": token})
                assert response.status_code == 403, name
                assert response.json() == {"detail": "the token does not grant access to this job"}
                assert token not in response.text
        expired, _ = Capabilities(SECRET, ttl_s=60).mint(job_b, "cancel", now=time.time() - 61)
        response = await stack.http.get(f"/answers/{job_b}", params={"token": expired})
        assert response.status_code == 403
        assert response.json()["detail"].startswith("the token has expired")
        # the genuine token still works, and an unknown job stays a refusal, not a 404 probe
        assert (await stack.http.get(stack.url(b["status_url"]))).status_code == 200
        unknown = await stack.http.get("/answers/no-such-job", params={"token": b["watch_token"]})
        assert unknown.status_code == 403


def test_the_secret_comes_from_the_environment_and_must_be_long_enough(
    redis_url, monkeypatch, caplog
):
    rag = StreamingRAGClient(redis_url)
    caplog.set_level(logging.WARNING, logger="streaming_rag_client.web")
    monkeypatch.setenv(SECRET_ENV, SECRET)
    create_app(rag)
    assert not caplog.records  # secured: nothing to warn about
    monkeypatch.delenv(SECRET_ENV)
    create_app(rag, authorize=lambda request, action, job_id: True)
    assert not caplog.records
    create_app(rag)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "open: anyone who reaches it may submit, watch and cancel" in record.getMessage()
    with pytest.raises(InvalidRequest, match="at least 16 bytes") as short:
        create_app(rag, secret="short-secret")
    assert "short-secret" not in str(short.value)
    assert SECRET not in repr(Capabilities(SECRET, ttl_s=1))
    with pytest.raises(InvalidRequest, match="list of origins"):
        create_app(rag, secret=SECRET, cors_origins="https://app.example")


# -- browser-safe requests -------------------------------------------------------------------------
async def test_only_json_bodies_are_accepted(redis_url, key_prefix):
    async with web_stack(redis_url, key_prefix) as stack:
        body = b'{"query": "q"}'
        for content_type in ["text/plain", "application/x-www-form-urlencoded", None]:
            headers = {"content-type": content_type} if content_type else {}
            response = await stack.http.post("/answers", content=body, headers=headers)
            assert response.status_code == 415, content_type
            assert response.json()["detail"].startswith("POST /answers needs Content-Type")
        ok = {"content-type": "application/json; charset=utf-8"}
        assert (await stack.http.post("/answers", content=body, headers=ok)).status_code == 202


async def test_cors_is_off_unless_origins_are_configured(redis_url, key_prefix):
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    async with web_stack(redis_url, key_prefix) as stack:
        origin = {"origin": "https://app.example"}
        response = await stack.http.options("/answers", headers={**origin, **preflight})
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-origin" not in (await submit(stack, headers=origin)).headers
    allowed = ["https://app.example"]
    async with web_stack(redis_url, key_prefix, cors_origins=allowed) as stack:
        ok = await stack.http.options(
            "/answers", headers={"origin": "https://app.example", **preflight}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in ok.headers["access-control-allow-methods"]
        evil = await stack.http.options(
            "/answers", headers={"origin": "https://evil.example", **preflight}
        )
        assert evil.status_code == 400
        assert "access-control-allow-origin" not in evil.headers
        response = await submit(stack, headers={"origin": "https://app.example"})
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        assert "location" in response.headers["access-control-expose-headers"].lower()


async def _raw_request(origin: str, head: str, body: bytes) -> bytes:
    """Send `head` and `body` on a fresh connection, never finishing the body; return the
    response the server sent anyway (up to the end of its headers and JSON)."""
    host, port = urlsplit(origin).hostname, urlsplit(origin).port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        response = await asyncio.wait_for(reader.readuntil(b"}"), WAIT_S)
        return response
    finally:
        writer.close()


async def test_an_oversized_body_is_413_before_it_is_read(redis_url, key_prefix):
    limit = 1000
    async with web_stack(redis_url, key_prefix, max_body_bytes=limit) as stack:
        host = f"127.0.0.1:{urlsplit(stack.origin).port}"
        start = f"POST /rag/answers HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        # declared too long: refused from the header alone, with no body sent at all
        head = start + "Content-Length: 10000000\r\n\r\n"
        response = await _raw_request(stack.origin, head, b"")
        assert response.startswith(b"HTTP/1.1 413 ")
        assert response.endswith(b'{"detail":"request body is over 1000 bytes"}')
        # chunked, no length: refused once the chunks received pass the limit, while the
        # client is still sending (the body is never finished)
        head = start + "Transfer-Encoding: chunked\r\n\r\n"
        chunk = b'{"query": "' + b"x" * 600
        body = b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2
        response = await _raw_request(stack.origin, head, body)
        assert response.startswith(b"HTTP/1.1 413 ")
        # within the limit it is an ordinary request
        assert (await submit(stack)).status_code == 202
        await _assert_nothing_but(stack, 1)


async def _assert_nothing_but(stack: Stack, submitted: int) -> None:
    """Only `submitted` jobs reached the queue (the refused ones never did)."""
    from streaming_rag.wire import parse_url
    from streaming_rag_client._connect import async_client

    r = async_client(parse_url(stack.rag.events_url or stack.rag.url))  # where job keys live
    try:
        jobs = [k async for k in r.scan_iter(match=f"{stack.rag.prefix}:{{*}}:*:job")]
        assert len(jobs) == submitted
    finally:
        await r.aclose()


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b'{"query": "q", "context": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "nests"),
        (b'{"query": "q", "context": {"a": ' + b"[" * 40 + b"]" * 40 + b"}}", "nests"),
        (b'{"query": "q", "context": {"a": [' + b"0," * 100_000 + b"0]}}", "holds over"),
    ],
    ids=["deep", "33-levels", "many-values"],
)
async def test_deep_or_huge_json_is_422(redis_url, key_prefix, content, detail):
    async with web_stack(redis_url, key_prefix) as stack:
        response = await stack.http.post("/answers", content=content, headers=JSON)
        assert response.status_code == 422
        assert response.json()["detail"].startswith(f"request body {detail}")
        nested = {"a": {"b": [[[{"c": "d"}]]]}}  # ordinary nesting passes
        response = await stack.http.post("/answers", json={"query": "q", "context": nested})
        assert response.status_code == 202


async def test_submits_past_the_rate_are_429_with_retry_after(redis_url, key_prefix):
    async with web_stack(redis_url, key_prefix, submit_rate=(2, 3600.0)) as stack:
        assert [(await submit(stack)).status_code for _ in range(2)] == [202, 202]
        refused = await submit(stack)
        assert refused.status_code == 429
        assert refused.json() == {
            "detail": "too many submits: at most 2 per 3600 s from one client"
        }
        assert 1 <= int(refused.headers["retry-after"]) <= 1800
        assert (await submit(stack)).status_code == 429
    with pytest.raises(InvalidRequest, match="n >= 1"):
        create_app(StreamingRAGClient(redis_url), secret=SECRET, submit_rate=(0, 1.0))


# -- SSE as browsers expect ------------------------------------------------------------------------
async def test_streams_start_with_retry_and_resuming_after_the_end_is_204(redis_url, key_prefix):
    async with web_stack(redis_url, key_prefix) as stack:
        body = (await submit(stack)).json()
        events_url = stack.url(body["events_url"])
        async with stack.http.stream("GET", events_url) as stream:
            lines = stream.aiter_lines()
            assert [await anext(lines), await anext(lines)] == ["retry: 3000", ""]
            trace = await messages(sse_rest(stream, lines))
        last, before = trace[-1].id, trace[-2].id
        assert trace[-1].event == "generation_done"
        for resume in [{"headers": {"Last-Event-ID": last}}, {"params": {"after": last}}]:
            response = await stack.http.get(events_url, **resume)
            assert response.status_code == 204
            assert response.content == b""
        ms = last.split("-")[0]
        assert (
            await stack.http.get(events_url, params={"after": f"{int(ms) + 1}"})
        ).status_code == 204
        async with stack.http.stream("GET", events_url, params={"after": before}) as stream:
            assert stream.status_code == 200
            assert await messages(sse(stream)) == trace[-1:]


async def sse_rest(stream: httpx.Response, lines: Any) -> Any:
    """`sse(stream)` over the lines left in `lines` (after some were read by hand)."""

    class Rest:
        headers = stream.headers

        def aiter_lines(self) -> Any:
            return lines

    async for item in sse(Rest()):  # type: ignore[arg-type]
        yield item


async def test_end_streams_ends_open_streams_with_a_reconnect_comment(redis_url, key_prefix):
    llm = GatedLLM()
    async with web_stack(redis_url, key_prefix, llm, keepalive_s=3600) as stack:
        body = (await submit(stack)).json()
        async with stack.http.stream("GET", stack.url(body["events_url"])) as stream:
            seen: list[Message | Comment] = []
            async for item in sse(stream):
                seen.append(item)
                if isinstance(item, Message) and item.data["data"] == "t1 ":
                    end_streams(stack.app)
        assert seen[-1] == Comment(SHUTTING_DOWN.decode().strip(": \n"))
        await asyncio.wait_for(stack.app.state.streams.wait_idle(), WAIT_S)
        assert llm.release is not None
        llm.release.set()


async def test_sigterm_ends_open_streams_and_serve_exits_promptly(redis_url, key_prefix):
    argv = ["serve", "--port", "0", "--redis-url", redis_url, "--prefix", key_prefix]
    env = {**os.environ, SECRET_ENV: SECRET}
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streaming_rag_cli",
        *argv,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    log: list[str] = []
    try:
        assert server.stderr is not None
        origin = None
        while origin is None:  # uvicorn names its port once it listens
            line = (await asyncio.wait_for(server.stderr.readline(), WAIT_S)).decode()
            assert line, f"serve exited: {''.join(log)}"
            log.append(line)
            if "Uvicorn running on " in line:
                origin = line.split("Uvicorn running on ")[1].split()[0]
        async with httpx.AsyncClient(base_url=origin, timeout=WAIT_S) as http:
            body = (await http.post("/answers", json={"query": "q"})).json()  # no worker: queued
            async with http.stream("GET", body["events_url"]) as stream:
                lines = stream.aiter_lines()
                assert await anext(lines) == "retry: 3000"
                server.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                rest = [line async for line in lines]
        assert rest[-2:] == [SHUTTING_DOWN.decode().rstrip("\n"), ""]
        code = await asyncio.wait_for(server.wait(), WAIT_S)
        assert time.monotonic() - signalled < 5.0
        tail = (await server.stderr.read()).decode()
        assert code == 0, "".join(log) + tail
        assert "Traceback" not in tail
        assert "graceful shutdown exceeded" not in tail  # the streams ended, nobody was cancelled
        assert body["watch_token"] not in "".join(log) + tail  # access log redacted
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


def test_loopback_hosts_and_token_redaction():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s" %d',
        ("c", "GET", "/a?x=1&token=s3cr.et&y=2", 200),
        None,
    )
    assert RedactTokens().filter(record)
    assert record.getMessage() == 'c - "GET /a?x=1&token=***&y=2" 200'
