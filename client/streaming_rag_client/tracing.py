"""OpenTelemetry for the client and the bridge (extra `otel`; see docs/operations.md, "Traces").

- `carrier()`: the caller's trace context as a W3C carrier, which `submit`/`asubmit` put in the
  job request (`JobRequest.trace`): the worker's `streaming_rag.job` span is its child.
- `TraceMiddleware` (ASGI, installed by `create_app`): each request of the bridge runs in a
  SERVER span `<METHOD> <route>` (a child of the request's `traceparent` header), or in the
  span an ASGI instrumentation already made current. `POST /answers` thereby becomes the
  parent of the job's span: one trace from the HTTP request to the last token.
- `note_job` / `watch_job`: the request span of `POST /answers` gets the job's id; the span of
  `GET /answers/{id}/events` gets it too, and a link to the span that submitted the job when
  this process did.

Nothing here imports OpenTelemetry unless the process already did (`opentelemetry.trace` in
`sys.modules`: a process with a tracer provider configured has); everything is a no-op then.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any

__all__ = ["TRACER_NAME", "TraceMiddleware", "carrier", "note_job", "watch_job"]

TRACER_NAME = "streaming_rag"
_JOB_ID = "streaming_rag.job_id"
_SUBMITTED_MAX = 4096  # span contexts of the jobs this process submitted, newest kept

_submitted: OrderedDict[str, Any] = OrderedDict()


def _otel() -> Any | None:
    """`opentelemetry.trace` when the process imported it, else None (cheap)."""
    return sys.modules.get("opentelemetry.trace")


def _current_span(otel: Any) -> Any | None:
    span = otel.get_current_span()
    return span if span.get_span_context().is_valid else None


def carrier() -> dict[str, str] | None:
    """The current trace context as a W3C carrier (``traceparent``, ``tracestate``), or None
    when nothing is being traced (OpenTelemetry not loaded, or no valid current span)."""
    otel = _otel()
    if otel is None or _current_span(otel) is None:
        return None
    from opentelemetry import propagate

    out: dict[str, str] = {}
    propagate.inject(out)
    return out or None


def note_job(job_id: str) -> None:
    """The current span (the bridge's `POST /answers` request) submitted `job_id`."""
    otel = _otel()
    span = None if otel is None else _current_span(otel)
    if span is None:
        return
    span.set_attribute(_JOB_ID, job_id)
    _submitted[job_id] = span.get_span_context()
    _submitted.move_to_end(job_id)
    while len(_submitted) > _SUBMITTED_MAX:
        _submitted.popitem(last=False)


def watch_job(job_id: str) -> None:
    """The current span (an event stream request) watches `job_id`: tag it, and link it to the
    span that submitted the job if this process did."""
    otel = _otel()
    span = None if otel is None else _current_span(otel)
    if span is None:
        return
    span.set_attribute(_JOB_ID, job_id)
    submitted = _submitted.get(job_id)
    if submitted is not None and hasattr(span, "add_link"):  # opentelemetry-api >= 1.23
        span.add_link(submitted, {"streaming_rag.link": "submitted by"})


class TraceMiddleware:
    """ASGI middleware: each HTTP request in a SERVER span (see the module docstring). The span
    of a streamed response ends when the stream does."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        otel = _otel() if scope["type"] == "http" else None
        if otel is None or _current_span(otel) is not None:
            await self.app(scope, receive, send)  # untraced, or an instrumentation's span
            return
        from opentelemetry import propagate

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = str(scope.get("method", "HTTP"))
        tracer = otel.get_tracer(TRACER_NAME)
        with tracer.start_as_current_span(
            method,
            context=propagate.extract(headers),
            kind=otel.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": str(scope.get("path", ""))},
        ) as span:

            async def traced_send(message: Any) -> None:
                if message["type"] == "http.response.start":
                    route = getattr(scope.get("route"), "path", None)  # Starlette sets it
                    if route:
                        route = str(scope.get("root_path", "")).rstrip("/") + route
                        span.set_attribute("http.route", route)
                        span.update_name(f"{method} {route}")
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(otel.Status(otel.StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, traced_send)
