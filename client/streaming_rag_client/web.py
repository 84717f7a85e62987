"""The HTTP bridge: a Starlette app over `StreamingRAGClient` (extra `web`), mountable in
FastAPI with `app.mount("/rag", create_app())`.

Routes (relative to where the app is mounted):

- `POST /answers` `{"query": str, "context"?: object}` (`Content-Type: application/json`) →
  202 `{"job_id", "events_url", "status_url", "cancel_url", "watch_url"}` (and `Location:` the
  status URL); invalid requests → 422 `{"detail": <the client's message>}`, a body of another
  type 415, one over `max_body_bytes` 413, past `submit_rate` 429 (`_limits`). With a secret
  the URLs carry capability tokens, and the body adds `watch_token`, `cancel_token` and
  `expires_at` (`_auth`).
- `GET /answers/{job_id}/events` → `text/event-stream`, one message per event (framing and
  the `data:` JSON in `streaming_rag_client._sse`); resumes after `Last-Event-ID` or
  `?after=<entry id>` (204 when that is at or past the job's terminal event, so an
  `EventSource` stops); starts with `retry: <ms>`; `: keep-alive` comments every `keepalive_s`
  while waiting; ends after the terminal event, or with `: server shutting down; ...` when the
  server shuts down (`end_streams`).
- `GET /answers/{job_id}` → `{"job_id", "status", "watchers"}` (how many follow it now: open
  event streams, other subscribers), plus `"answer"` (the chunks joined) once the job has
  ended (done, failed, cancelled) and `"error"` (the ERROR event's data) if any.
- `DELETE /answers/{job_id}` → `{"cancelled": bool}` (false: it had already ended).
- `GET /` → a small page that asks a question and renders the answer live (`?job=<id>`
  watches an existing job).
- `GET /client.js` → the page's browser client, an ES module exporting `watch()` and
  `submit()` for front ends of your own (`text/javascript`, cached for `CLIENT_JS_MAX_AGE_S`).

Unknown jobs → 404, an unreachable Redis (for longer than the client's `reconnect_s`) → 503,
no valid credentials → 401, refused → 403 (`authorize=`, capability tokens), each as
`{"detail": message}`.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from streaming_rag import EventType
from streaming_rag.exceptions import Forbidden, InvalidRequest, JobNotFound, Unauthorized
from streaming_rag.wire import DEFAULT_PREFIX, validate_job_id

from ._auth import SECRET_ENV, Action, Authorize, Capabilities, Gate, secret_from_env
from ._client import PREFIX_ENV, StreamingRAGClient
from ._core import JobStatus
from ._fanout_pages import Nudge, follow_pages
from ._http import EventStreamResponse, exception_handlers
from ._limits import MAX_BODY_BYTES, RateLimit, json_body
from ._sse import RETRY_MS, OpenStreams, entry_key, event_stream, resume_cursor
from ._sse_sink import Stopping, page_stream
from .tracing import TraceMiddleware, note_job, watch_job

if TYPE_CHECKING:
    from .metrics import BridgeMetrics

__all__ = [
    "MAX_BODY_BYTES",
    "SECRET_ENV",
    "EventStreamResponse",
    "Forbidden",
    "Unauthorized",
    "create_app",
    "end_streams",
]

CLIENT_JS_MAX_AGE_S = 300  # short: a new version reaches browsers within minutes
logger = logging.getLogger(__name__)
_ENDED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


class _Bridge:
    """The route handlers, sharing one client, one access gate and one shutdown signal."""

    def __init__(
        self,
        rag: StreamingRAGClient,
        router: Starlette,
        *,
        keepalive_s: float,
        gate: Gate,
        rate: RateLimit | None,
        max_body_bytes: int,
        retry_ms: int,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        self.rag = rag
        self.metrics = metrics
        self.keepalive_s = keepalive_s
        self.router = router
        self.gate = gate
        self.rate = rate
        self.max_body_bytes = max_body_bytes
        self.retry_ms = retry_ms
        self.streams = OpenStreams()
        self.stopping = Stopping()  # an asyncio.Event that also wakes every open stream
        static = files("streaming_rag_client").joinpath("static")
        self.page = static.joinpath("index.html").read_text(encoding="utf-8")
        self.client_js = static.joinpath("client.js").read_text(encoding="utf-8")

    def url(self, request: Request, name: str, **params: str) -> str:
        """The path of route `name` as the browser sees it (with the mount point / root path)."""
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return root + str(self.router.url_path_for(name, **params))

    async def job_id(self, request: Request, action: Action) -> str:
        """The route's job id, once the gate allows `action` on it (an id no job can have:
        `JobNotFound`)."""
        job_id = str(request.path_params["job_id"])
        try:
            validate_job_id(job_id)
        except InvalidRequest:  # no job can have this id
            raise JobNotFound(job_id, self.rag.prefix) from None
        await self.gate.check(request, action, job_id)
        return job_id

    def links(self, request: Request, job_id: str) -> dict[str, Any]:
        """The job's URLs (with capability tokens when a secret is set), as `POST /answers`
        returns them."""
        caps = self.gate.capabilities
        watch = cancel = ""
        body: dict[str, Any] = {}
        if caps is not None:
            watch, expires_at = caps.mint(job_id, "watch")
            cancel, _ = caps.mint(job_id, "cancel")
            body.update(watch_token=watch, cancel_token=cancel, expires_at=expires_at)

        def link(name: str, token: str, **params: str) -> str:
            query = urlencode({"token": token}) if token else ""
            return self.url(request, name, **params) + ("?" + query if query else "")

        page = {"job": job_id, **({"token": watch} if watch else {})}
        return {
            "events_url": link("events", watch, job_id=job_id),
            "status_url": link("answer", watch, job_id=job_id),
            "cancel_url": link("cancel", cancel, job_id=job_id),
            "watch_url": self.url(request, "index") + "?" + urlencode(page),
            **body,
        }

    async def ended_by(self, job_id: str, after: str) -> bool:
        """Whether the ended job `job_id` has no event after entry `after`."""
        last = None
        async with aclosing(self.rag.aevents(job_id)) as events:
            async for event in events:
                last = event.id
        return last is None or entry_key(after) >= entry_key(last)

    async def index(self, request: Request) -> Response:
        answers = html.escape(self.url(request, "submit"), quote=True)
        return HTMLResponse(self.page.replace("{{ANSWERS_URL}}", answers))

    async def client(self, request: Request) -> Response:
        headers = {"Cache-Control": f"public, max-age={CLIENT_JS_MAX_AGE_S}"}
        return Response(self.client_js, media_type="text/javascript", headers=headers)

    async def submit(self, request: Request) -> Response:
        await self.gate.check(request, "submit", None)
        if self.rate is not None:
            self.rate.take(request.client.host if request.client else "unknown")
        data = await json_body(request, max_body_bytes=self.max_body_bytes)
        query: Any = data.get("query")  # validated by the client: its message, its rules
        job_id = await self.rag.asubmit(query, data.get("context"))
        note_job(job_id)
        body = {"job_id": job_id, **self.links(request, job_id)}
        headers = {"Location": body["status_url"]}
        return JSONResponse(body, status_code=202, headers=headers)

    async def events(self, request: Request) -> Response:
        job_id = await self.job_id(request, "watch")
        watch_job(job_id)
        headers, query = request.headers, request.query_params
        after = resume_cursor(headers.get("last-event-id"), query.get("after"))
        status = await self.rag.astatus(job_id)
        if status is JobStatus.NOT_FOUND:
            raise JobNotFound(job_id, self.rag.prefix)
        if after is not None and status in _ENDED and await self.ended_by(job_id, after):
            return Response(status_code=204)  # nothing left: an EventSource stops here
        rag = self.rag
        if rag.fanout:  # pages of the job's shared log: one wake-up per page, frames shared
            rag._async_transport()  # the client's fan-out exists from here on
            assert rag._fanout is not None
            nudge = Nudge()
            pages = follow_pages(rag._fanout, rag._keys(job_id), after or "0-0", rag._stats, nudge)
            if self.metrics is not None:
                pages = self.metrics.watched_pages(job_id, pages)
            return EventStreamResponse(
                page_stream(
                    pages,
                    nudge,
                    self.keepalive_s,
                    self.streams,
                    stopping=self.stopping,
                    retry_ms=self.retry_ms,
                )
            )
        events = rag.aevents(job_id, after=after)
        if self.metrics is not None:
            events = self.metrics.watched(job_id, events)
        stream = event_stream(
            events, self.keepalive_s, self.streams, stopping=self.stopping, retry_ms=self.retry_ms
        )
        return EventStreamResponse(stream)

    async def answer(self, request: Request) -> Response:
        job_id = await self.job_id(request, "status")
        details = await self.rag.astatus(job_id, details=True)
        status = details.status
        if status is JobStatus.NOT_FOUND:
            raise JobNotFound(job_id, self.rag.prefix)
        body: dict[str, Any] = {"job_id": job_id, "status": status.value}
        body["watchers"] = details.watchers  # subscribers following it now (SSE streams too)
        if status in _ENDED:
            # what the worker recorded as the job ended (null where it recorded nothing):
            # prompt_tokens, completion_tokens, usage_source, model, finish_reason
            body.update(details.as_dict())
            chunks: list[str] = []
            async with aclosing(self.rag.aevents(job_id)) as events:
                async for event in events:
                    if event.type is EventType.CHUNK:
                        chunks.append(event.data)
                    elif event.type is EventType.ERROR:
                        body["error"] = event.data
            body["answer"] = "".join(chunks)
        return JSONResponse(body)

    async def cancel(self, request: Request) -> Response:
        job_id = await self.job_id(request, "cancel")
        return JSONResponse({"cancelled": await self.rag.acancel(job_id)})


def end_streams(app: Starlette) -> None:
    """End every open event stream of `app` (a `create_app` app) now, each with the comment
    `: server shutting down; reconnect with Last-Event-ID`, and every stream opened later at
    once; call it when your server begins a graceful shutdown (`streaming-rag serve` does; the
    app's own lifespan does at shutdown, which uvicorn runs only after open responses end)."""
    app.state.stopping.set()


def create_app(
    client: StreamingRAGClient | None = None,
    *,
    redis_url: str | None = None,
    prefix: str | None = None,
    start_timeout: float | None = None,
    keepalive_s: float = 15.0,
    authorize: Authorize | None = None,
    secret: str | bytes | None = None,
    token_ttl_s: float | None = None,
    cors_origins: Sequence[str] | None = None,
    submit_rate: tuple[int, float] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    retry_ms: int = RETRY_MS,
    metrics: BridgeMetrics | bool = False,
    **client_kwargs: Any,
) -> Starlette:
    """The bridge as a Starlette app over `client`, or over a client it creates (and closes on
    shutdown) from `redis_url` (default `$REDIS_URL`, else redis://127.0.0.1:6379/0), `prefix`
    (default `$STREAMING_RAG_PREFIX`, else `srag`), `start_timeout` (default 30 s) and any
    other `StreamingRAGClient` keyword. With no arguments it reads only the environment, so
    `uvicorn --factory streaming_rag_client.web:create_app` serves it. `reconnect_s` (a client
    keyword, default 30 s) is how long a request or an event stream rides through a Redis
    outage: requests then answer 503, and event streams end with the `: server unavailable`
    comment (keep-alives flow meanwhile).

    Security (see docs/api.md): `authorize(request, action, job_id)` (sync or async; action
    `submit`, `watch`, `status` or `cancel`; job_id None for submit) returns True to allow,
    False to refuse (403), or raises `Unauthorized` (401) / `Forbidden` (403). `secret` (default
    `$STREAMING_RAG_SECRET`, at least 16 bytes) turns on capability links: watch, status and
    cancel then need the token `POST /answers` returned, valid for `token_ttl_s` (default the
    client's `retention_s`). Both given: both must allow. Neither: anyone who reaches the app
    may submit, watch and cancel (logged as a warning). `cors_origins` allows those origins
    cross-site (default: none); `submit_rate=(n, per_s)` allows each client address `n` submits
    per `per_s` seconds (429 beyond); `max_body_bytes` caps a body (413); `retry_ms` is the
    `retry:` every event stream starts with. `metrics` (True, or a `BridgeMetrics`; extra
    `metrics`) records Prometheus metrics of the event streams in `app.state.metrics.registry`
    (served by `streaming-rag serve --metrics-port`, never on the app's own routes: see
    `streaming_rag_client.metrics`).

    Mounted in another app (`app.mount("/rag", create_app(...))`) its lifespan does not run:
    pass your own client then, close it in your app's lifespan, and call `end_streams(bridge)`
    when yours shuts down."""
    if not keepalive_s > 0:
        raise InvalidRequest(f"keepalive_s must be > 0 seconds, got {keepalive_s}")
    if (
        isinstance(max_body_bytes, bool)
        or not isinstance(max_body_bytes, int)
        or max_body_bytes < 1
    ):
        raise InvalidRequest(f"max_body_bytes must be an int >= 1, got {max_body_bytes!r}")
    if isinstance(retry_ms, bool) or not isinstance(retry_ms, int) or retry_ms < 0:
        raise InvalidRequest(f"retry_ms must be an int >= 0, got {retry_ms!r}")
    if isinstance(cors_origins, str):
        raise InvalidRequest(f"cors_origins must be a list of origins, got {cors_origins!r}")
    if authorize is not None and not callable(authorize):
        raise InvalidRequest(f"authorize must be callable, got {type(authorize).__name__}")
    rate = None if submit_rate is None else RateLimit(*submit_rate)
    if metrics is True:
        from .metrics import BridgeMetrics

        metrics = BridgeMetrics()
    elif metrics is not False and not hasattr(metrics, "watched"):
        raise InvalidRequest(f"metrics must be True, False or a BridgeMetrics, got {metrics!r}")
    owns = client is None
    if client is None:
        client = StreamingRAGClient(
            redis_url,
            prefix=prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX,
            start_timeout=30.0 if start_timeout is None else start_timeout,
            **client_kwargs,
        )
    elif redis_url is not None or prefix is not None or start_timeout is not None or client_kwargs:
        raise TypeError("pass either a client or the settings to build one, not both")
    rag = client
    if secret is None:
        secret = secret_from_env()
    ttl_s = rag.retention_s if token_ttl_s is None else token_ttl_s
    capabilities = None if secret is None else Capabilities(secret, ttl_s=ttl_s)
    gate = Gate(authorize, capabilities)
    if gate.open:
        logger.warning(
            "the HTTP bridge is open: anyone who reaches it may submit, watch and cancel jobs; "
            "set %s or pass create_app(authorize=...) to restrict it",
            SECRET_ENV,
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            end_streams(app)
            if owns:
                await rag.aclose()

    middleware = [Middleware(TraceMiddleware)]  # a span per request when tracing (`tracing`)
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Content-Type", "Authorization", "Last-Event-ID"],
                expose_headers=["Location", "Retry-After"],
            )
        )
    app = Starlette(
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers=exception_handlers(),
    )
    bridge = _Bridge(
        rag,
        app,
        keepalive_s=keepalive_s,
        gate=gate,
        rate=rate,
        max_body_bytes=max_body_bytes,
        retry_ms=retry_ms,
        metrics=metrics or None,
    )
    for path, endpoint, method, name in [
        ("/", bridge.index, "GET", "index"),
        ("/client.js", bridge.client, "GET", "client_js"),
        ("/answers", bridge.submit, "POST", "submit"),
        ("/answers/{job_id}", bridge.answer, "GET", "answer"),
        ("/answers/{job_id}", bridge.cancel, "DELETE", "cancel"),
        ("/answers/{job_id}/events", bridge.events, "GET", "events"),
    ]:
        app.router.routes.append(Route(path, endpoint, methods=[method], name=name))
    app.state.rag = rag
    app.state.streams = bridge.streams
    app.state.stopping = bridge.stopping
    app.state.metrics = bridge.metrics
    return app
